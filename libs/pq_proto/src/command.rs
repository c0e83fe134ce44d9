//! Parsing of the replication commands a walsender accepts as simple
//! queries (`IDENTIFY_SYSTEM`, `START_REPLICATION`, ...).
//!
//! Invariants: keywords are case-insensitive, surrounding whitespace and
//! one trailing `;` are ignored; unquoted identifiers are lower-cased and
//! `"quoted"` ones kept as written, as in PostgreSQL's replication scanner.
//! A command that starts with a known keyword but has bad arguments is
//! [`ProtocolError::Malformed`]; text that is not a known command (plain
//! SQL, logical replication, `BASE_BACKUP`, ...) is
//! [`ReplicationCommand::Other`] with the original text.
//!
//! Cancellation: synchronous code only.

use utils::lsn::Lsn;

use crate::error::{ProtocolError, Result};

/// `START_REPLICATION [SLOT name] [PHYSICAL] X/Y [TIMELINE n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReplication {
    pub slot: Option<String>,
    pub start: Lsn,
    pub timeline: Option<u32>,
}

/// A replication command received as a simple query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    IdentifySystem,
    StartReplication(StartReplication),
    /// `SHOW name` (the name lower-cased unless quoted).
    Show(String),
    TimelineHistory(u32),
    ReadReplicationSlot(String),
    /// Recognized only: the slot name and the rest of the command verbatim.
    CreateReplicationSlot {
        name: String,
        options: String,
    },
    DropReplicationSlot(String),
    Other(String),
}

const WHAT: &str = "replication command";

fn bad(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::malformed(WHAT, detail)
}

fn identifier(token: &str) -> String {
    match token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => token.to_ascii_lowercase(),
    }
}

fn keyword_is(token: Option<&&str>, keyword: &str) -> bool {
    token.is_some_and(|t| t.eq_ignore_ascii_case(keyword))
}

impl ReplicationCommand {
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let body = trimmed.strip_suffix(';').unwrap_or(trimmed).trim_end();
        let tokens: Vec<&str> = body.split_whitespace().collect();
        let Some(first) = tokens.first() else {
            return Ok(ReplicationCommand::Other(text.to_string()));
        };
        let args = tokens.get(1..).unwrap_or_default();
        match first.to_ascii_uppercase().as_str() {
            "IDENTIFY_SYSTEM" if args.is_empty() => Ok(ReplicationCommand::IdentifySystem),
            "IDENTIFY_SYSTEM" => Err(bad("IDENTIFY_SYSTEM takes no arguments")),
            "START_REPLICATION" => parse_start_replication(args, text),
            "SHOW" => match args {
                [name] => Ok(ReplicationCommand::Show(identifier(name))),
                _ => Err(bad("SHOW takes one name")),
            },
            "TIMELINE_HISTORY" => match args {
                [tli] => parse_timeline(tli).map(ReplicationCommand::TimelineHistory),
                _ => Err(bad("TIMELINE_HISTORY takes one timeline")),
            },
            "READ_REPLICATION_SLOT" => match args {
                [name] => Ok(ReplicationCommand::ReadReplicationSlot(identifier(name))),
                _ => Err(bad("READ_REPLICATION_SLOT takes one slot name")),
            },
            "CREATE_REPLICATION_SLOT" => parse_create_slot(args),
            "DROP_REPLICATION_SLOT" => match args {
                [name] | [name, _] => Ok(ReplicationCommand::DropReplicationSlot(identifier(name))),
                _ => Err(bad("DROP_REPLICATION_SLOT takes a slot name")),
            },
            _ => Ok(ReplicationCommand::Other(text.to_string())),
        }
    }
}

fn parse_timeline(token: &str) -> Result<u32> {
    match token.parse::<u32>() {
        Ok(tli) if tli > 0 => Ok(tli),
        _ => Err(bad(format!("invalid timeline {token:?}"))),
    }
}

fn parse_start_replication(args: &[&str], text: &str) -> Result<ReplicationCommand> {
    let mut rest = args;
    let mut slot = None;
    if keyword_is(rest.first(), "SLOT") {
        let name = rest.get(1).ok_or_else(|| bad("SLOT needs a name"))?;
        slot = Some(identifier(name));
        rest = rest.get(2..).unwrap_or_default();
    }
    if keyword_is(rest.first(), "LOGICAL") {
        return Ok(ReplicationCommand::Other(text.to_string()));
    }
    if keyword_is(rest.first(), "PHYSICAL") {
        rest = rest.get(1..).unwrap_or_default();
    }
    let (start, timeline) = match rest {
        [lsn] => (lsn, None),
        [lsn, kw, tli] if kw.eq_ignore_ascii_case("TIMELINE") => (lsn, Some(parse_timeline(tli)?)),
        _ => {
            return Err(bad(
                "expected START_REPLICATION [SLOT s] [PHYSICAL] X/Y [TIMELINE n]",
            ))
        }
    };
    let start = start
        .parse::<Lsn>()
        .map_err(|_| bad(format!("invalid start position {start:?}")))?;
    Ok(ReplicationCommand::StartReplication(StartReplication {
        slot,
        start,
        timeline,
    }))
}

fn parse_create_slot(args: &[&str]) -> Result<ReplicationCommand> {
    let Some((name, options)) = args.split_first() else {
        return Err(bad("CREATE_REPLICATION_SLOT needs a slot name"));
    };
    Ok(ReplicationCommand::CreateReplicationSlot {
        name: identifier(name),
        options: options.join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplicationCommand as C;

    fn p(s: &str) -> ReplicationCommand {
        ReplicationCommand::parse(s).unwrap()
    }

    #[test]
    fn simple_commands() {
        assert_eq!(p("IDENTIFY_SYSTEM"), C::IdentifySystem);
        assert_eq!(p("  identify_system ; "), C::IdentifySystem);
        assert_eq!(
            p("SHOW wal_segment_size;"),
            C::Show("wal_segment_size".into())
        );
        assert_eq!(p("show \"Foo\""), C::Show("Foo".into()));
        assert_eq!(p("TIMELINE_HISTORY 2"), C::TimelineHistory(2));
        assert_eq!(
            p("read_replication_slot S1"),
            C::ReadReplicationSlot("s1".into())
        );
        assert_eq!(
            p("DROP_REPLICATION_SLOT s WAIT"),
            C::DropReplicationSlot("s".into())
        );
        assert_eq!(
            p("CREATE_REPLICATION_SLOT s1 PHYSICAL RESERVE_WAL"),
            C::CreateReplicationSlot {
                name: "s1".into(),
                options: "PHYSICAL RESERVE_WAL".into()
            }
        );
    }

    #[test]
    fn start_replication_forms() {
        let sr = |slot: Option<&str>, start: u64, timeline| {
            C::StartReplication(StartReplication {
                slot: slot.map(String::from),
                start: Lsn(start),
                timeline,
            })
        };
        assert_eq!(p("START_REPLICATION 0/1000000"), sr(None, 0x100_0000, None));
        assert_eq!(
            p("start_replication physical 1/2 timeline 3;"),
            sr(None, 0x1_0000_0002, Some(3))
        );
        assert_eq!(
            p("START_REPLICATION SLOT \"ps_1\" PHYSICAL 0/16B3748 TIMELINE 1"),
            sr(Some("ps_1"), 0x16B_3748, Some(1))
        );
        assert_eq!(p("START_REPLICATION SLOT s 0/0"), sr(Some("s"), 0, None));
        let logical = "START_REPLICATION SLOT s LOGICAL 0/0";
        assert_eq!(p(logical), C::Other(logical.into()));
    }

    #[test]
    fn bad_arguments_are_errors_and_other_text_is_other() {
        for s in [
            "START_REPLICATION",
            "START_REPLICATION SLOT",
            "START_REPLICATION zz/1",
            "START_REPLICATION 0/1 TIMELINE 0",
            "START_REPLICATION 0/1 TIMELINE",
            "TIMELINE_HISTORY x",
            "SHOW",
            "IDENTIFY_SYSTEM now",
            "CREATE_REPLICATION_SLOT",
        ] {
            assert!(ReplicationCommand::parse(s).is_err(), "{s}");
        }
        assert_eq!(p("SELECT 1"), C::Other("SELECT 1".into()));
        assert_eq!(p(""), C::Other(String::new()));
        assert_eq!(p("BASE_BACKUP"), C::Other("BASE_BACKUP".into()));
    }
}
