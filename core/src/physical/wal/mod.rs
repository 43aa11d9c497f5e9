//! WAL for point-in-time recovery: [`name`] (file names, segment numbers, LSNs,
//! timeline histories), [`archive`] (push, fetch, listing and retention of the
//! archive), [`prefetcher`] (the segments recovery will ask for next), [`spool`] and
//! [`pusher`] (asynchronous archiving through a local
//! spool), [`gaps`] (records of WAL dropped by a full spool), [`stream`] (the growing segment
//! of streaming mode, stored in chunks), [`receiver`] (the agent's `pg_receivewal`
//! and what it stores), and [`settings`] (the
//! `archive_command` and `restore_command` the server runs, and `ALTER SYSTEM`). The
//! names callers use are re-exported here.

pub mod archive;
pub mod gaps;
pub mod name;
pub mod prefetcher;
pub mod pusher;
pub mod receiver;
pub mod settings;
pub mod spool;
pub mod stream;

pub use archive::{
    fetch, list_archive, push, wal_not_needed, ArchivedWal, PushOutcome, PREFETCH_DIR,
};
pub use name::{
    format_lsn, needed_segments, parse_history, parse_lsn, segment_name, segments_per_log,
    TimelineSwitch, WalFileKind, WalFileName, DEFAULT_SEGMENT_SIZE,
};
pub use settings::{
    apply_archive_settings, archive_settings, command_word, pgvault_program, restore_command,
    restore_command_from, stream_settings, summary_settings, AppliedSetting,
};
