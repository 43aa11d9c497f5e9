//! Logical backups and what reads them back: `pg_dump` of one database with its cluster
//! globals ([`backup`]), restores into a target database ([`restore`]), of some tables only ([`tables`]), verification
//! without a target ([`verify`]), and the globals script's parsing ([`globals`]).

pub mod backup;
pub mod globals;
pub mod restore;
pub mod tables;
pub mod verify;
