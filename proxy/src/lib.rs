//! Strata's proxy: one PostgreSQL address in front of every endpoint of a
//! cluster. A client names its endpoint in the startup packet
//! (`options=endpoint=NAME`); the proxy wakes the endpoint if it was
//! suspended for being idle, connects to its compute, and relays the
//! session. Endpoints with a suspend timeout are stopped when they have had
//! no client for that long.
//!
//! Clients authenticate with the compute's SCRAM-SHA-256 (relayed), or
//! give `endpoint=NAME;PASSWORD` as their password ([`auth`]).
//!
//! Data flow: client → [`conn`] (startup, [`route`], [`auth`]) → [`endpoints`]
//! (lookup, wake, count) → compute; [`endpoints`]'s suspender stops idle
//! computes in the background.

pub mod auth;
pub mod cancel;
pub mod conn;
pub mod endpoints;
pub mod metrics;
pub mod route;
