//! The `strata` command's library: a local Strata cluster in a repository
//! directory — its configuration ([`config`]) and its components run as
//! background processes ([`background`], [`cluster`]); where a compute
//! starts is decided from the safekeepers ([`election`]); per-tenant storage
//! settings ([`tenant_conf`]) and branch removal ([`timeline_delete`]);
//! passwords of endpoints and of the replication role ([`secrets`]), and
//! lazy computes over FUSE ([`lazy`]); tokens and keys ([`auth`]);
//! basebackups are unpacked as they arrive ([`untar`]).

pub mod api;
pub mod auth;
pub mod background;
pub mod cluster;
pub mod config;
pub mod election;
pub mod endpoint;
pub mod import;
pub mod lazy;
pub mod logs;
pub mod ops;
pub mod phases;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod tenant_conf;
pub mod timeline_delete;
pub mod tls;
pub mod untar;
