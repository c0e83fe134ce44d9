//! Resource manager ids of PostgreSQL 15 (`access/rmgrlist.h`) and their
//! names as `pg_waldump` prints them.

/// Names of the built-in resource managers, indexed by id.
const BUILTIN_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
pub const RM_SMGR_ID: u8 = 2;
pub const RM_CLOG_ID: u8 = 3;
pub const RM_DBASE_ID: u8 = 4;
pub const RM_TBLSPC_ID: u8 = 5;
pub const RM_MULTIXACT_ID: u8 = 6;
pub const RM_RELMAP_ID: u8 = 7;
pub const RM_STANDBY_ID: u8 = 8;
pub const RM_HEAP2_ID: u8 = 9;
pub const RM_HEAP_ID: u8 = 10;
pub const RM_BTREE_ID: u8 = 11;
pub const RM_HASH_ID: u8 = 12;
pub const RM_GIN_ID: u8 = 13;
pub const RM_GIST_ID: u8 = 14;
pub const RM_SEQ_ID: u8 = 15;
pub const RM_SPGIST_ID: u8 = 16;
pub const RM_BRIN_ID: u8 = 17;
pub const RM_COMMIT_TS_ID: u8 = 18;
pub const RM_REPLORIGIN_ID: u8 = 19;
pub const RM_GENERIC_ID: u8 = 20;
pub const RM_LOGICALMSG_ID: u8 = 21;
pub const RM_MAX_BUILTIN_ID: u8 = RM_LOGICALMSG_ID;
/// Ids from here up are reserved for extensions' custom resource managers.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// Whether PostgreSQL 15 accepts `rmid` in a record header.
pub fn is_valid_rmgr_id(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}

/// The name `pg_waldump` prints for `rmid`.
pub fn rmgr_name(rmid: u8) -> String {
    match BUILTIN_NAMES.get(rmid as usize) {
        Some(name) => name.to_string(),
        None if rmid >= RM_MIN_CUSTOM_ID => format!("custom{rmid:03}"),
        None => format!("invalid{rmid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_validity() {
        assert_eq!(rmgr_name(RM_HEAP_ID), "Heap");
        assert_eq!(rmgr_name(RM_LOGICALMSG_ID), "LogicalMessage");
        assert_eq!(rmgr_name(130), "custom130");
        assert!(is_valid_rmgr_id(RM_XLOG_ID));
        assert!(is_valid_rmgr_id(200));
        assert!(!is_valid_rmgr_id(22));
        assert!(!is_valid_rmgr_id(127));
    }
}
