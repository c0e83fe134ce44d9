//! Small shared building blocks used by every Strata component: log sequence
//! numbers ([`lsn::Lsn`]), tenant/timeline identifiers ([`id`]) and
//! [`seqwait::SeqWait`], the primitive that lets a reader await an LSN;
//! [`fs`]: durable atomic file replacement; [`failpoint`]: test-only
//! SIGKILL points armed by an environment variable.
pub mod failpoint;
pub mod fs;
pub mod id;
pub mod logging;
pub mod netns;
pub mod lsn;
pub mod pg_user;
pub mod seqwait;
