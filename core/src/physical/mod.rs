//! Physical backups and point-in-time recovery: base backups with `pg_basebackup`
//! ([`basebackup`]), the WAL archive ([`wal`]), its continuity check
//! ([`archive_check`]), incremental backups and their chains ([`incremental`]), and
//! restores to a time, LSN, transaction or name ([`pitr`]).

pub mod archive_check;
pub mod basebackup;
pub mod incremental;
pub mod pitr;
pub mod wal;
