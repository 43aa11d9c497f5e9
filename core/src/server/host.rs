//! The host a PostgreSQL server runs on: a free loopback port, and the OS user the
//! server must run as (PostgreSQL refuses to run as root).

use std::path::Path;

use crate::error::{Error, Result};

/// The OS user the server must run as: `None` for the current user, `postgres` when
/// running as root (the directory is handed to it).
pub(crate) fn server_user(dir: &Path) -> Result<Option<String>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let exists = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .is_some();
    if !exists {
        return Err(Error::Invalid(
            "PostgreSQL refuses to run as root and there is no 'postgres' OS user to run the ephemeral cluster as; run pgvault as another user or create one".into(),
        ));
    }
    chown_to(dir, Some("postgres"))?;
    Ok(Some("postgres".into()))
}

/// Hand `path` to the OS user `user` (nothing when `None`), so a server running as
/// that user can write it.
pub(crate) fn chown_to(path: &Path, user: Option<&str>) -> Result<()> {
    let Some(user) = user else { return Ok(()) };
    let account = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| Error::Invalid(format!("OS user {user} not found")))?;
    nix::unistd::chown(path, Some(account.uid), Some(account.gid)).map_err(|e| {
        Error::io(
            format!("cannot hand {} to user {user}", path.display()),
            std::io::Error::from(e),
        )
    })
}

/// A free TCP port on loopback.
pub(crate) fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("cannot find a free port for the ephemeral cluster", e))
}
