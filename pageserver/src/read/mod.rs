//! The read path's front ends: [`basebackup`] (a data directory for a
//! (timeline, LSN) as a tar archive) and [`page_service`] (GetPage@LSN and
//! relation metadata over the PostgreSQL wire protocol). Both read through
//! [`crate::tenant::timeline::Timeline`], whose layer walk and WAL redo
//! produce page versions.
pub mod basebackup;
pub mod page_service;
