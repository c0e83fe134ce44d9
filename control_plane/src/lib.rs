//! The `strata` command's library: a local Strata cluster in a repository
//! directory — its configuration ([`config`]) and its components run as
//! background processes ([`background`], [`cluster`]).

pub mod api;
pub mod background;
pub mod cluster;
pub mod config;
pub mod endpoint;
pub mod import;
pub mod logs;
pub mod ops;
pub mod settings;
pub mod state;
