//! Relation file identity: `RelFileNode` (tablespace, database, relation
//! file number) and fork numbers, as PostgreSQL 15 names them.

use std::fmt;

use crate::pg_constants::*;

/// `RelFileNode`: which relation file a block belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFileNode {
    pub spc_node: u32,
    pub db_node: u32,
    pub rel_node: u32,
}

impl fmt::Display for RelFileNode {
    /// `spc/db/rel`, as `pg_waldump` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc_node, self.db_node, self.rel_node)
    }
}

/// Name of a fork as PostgreSQL spells it (`main`, `fsm`, `vm`, `init`).
pub fn fork_name(forknum: u8) -> Option<&'static str> {
    match forknum {
        MAIN_FORKNUM => Some("main"),
        FSM_FORKNUM => Some("fsm"),
        VISIBILITYMAP_FORKNUM => Some("vm"),
        INIT_FORKNUM => Some("init"),
        _ => None,
    }
}

/// Fork number for a fork name.
pub fn fork_number(name: &str) -> Option<u8> {
    (0..=MAX_FORKNUM).find(|&n| fork_name(n) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_names_round_trip() {
        for n in 0..=MAX_FORKNUM {
            assert_eq!(fork_number(fork_name(n).unwrap()), Some(n));
        }
        assert_eq!(fork_name(4), None);
        assert_eq!(fork_number("bogus"), None);
        let rel = RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 };
        assert_eq!(rel.to_string(), "1663/5/16384");
    }
}
