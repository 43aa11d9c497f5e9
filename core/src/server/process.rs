//! Running PostgreSQL's programs as child processes: a reader that fails a stream
//! unless its tool exited successfully, and a runner for short tools.
//!
//! These use `std::process`, not `tokio::process`, on purpose: the reader's consumer is
//! a blocking pipeline stage (it reads on its own thread, see [`crate::pipeline`]), and
//! [`run_tool`] is called from blocking threads. Async code starts children with
//! `tokio::process` (version probes, for example).

use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Reads a child's stdout and, at its end, fails unless the child exited successfully:
/// a partial stream from a failed `pg_dump` is never mistaken for a complete one.
/// stderr is drained on its own thread so the pipes cannot deadlock. Dropping the
/// reader early kills the child.
pub struct ChildReader {
    tool: String,
    child: Arc<Mutex<Child>>,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<String>>,
    finished: bool,
    kept_stderr: Option<std::sync::Arc<std::sync::Mutex<String>>>,
}

/// Handle that can kill a [`ChildReader`]'s process from another task, e.g. when the
/// upload failed while the tool waits on a lock and its reader blocks in `read`. It
/// holds the process itself, not its pid: once the process has been reaped, killing it
/// does nothing, so a reused pid is never signalled.
#[derive(Clone)]
pub struct ChildKiller(Arc<Mutex<Child>>);

impl ChildKiller {
    /// Kill the process (SIGKILL); its reader then fails at the end of the stream.
    pub fn kill(&self) {
        let mut child = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
    }
}

fn drain_stderr(tool: &str, mut child: Child) -> Result<(Child, Option<JoinHandle<String>>)> {
    let stderr = child.stderr.take();
    let handle = stderr.map(|mut s| {
        std::thread::Builder::new()
            .name(format!("{tool}-stderr"))
            .spawn(move || {
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                text
            })
    });
    let handle = match handle {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => return Err(Error::io(format!("cannot start {tool} stderr reader"), e)),
        None => None,
    };
    Ok((child, handle))
}

/// A tool's stderr for an error message: its first error line (the cause, which a long
/// run buries under later messages) and its last lines (how it ended), joined on one
/// line and each shortened.
pub fn stderr_tail(text: &str) -> String {
    const LAST: usize = 3;
    const LINE_LIMIT: usize = 300;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(LAST);
    let first_error = lines[..start]
        .iter()
        .position(|l| l.contains("error:") || l.contains("ERROR:") || l.contains("FATAL:"));
    let mut shown: Vec<&str> = Vec::new();
    if let Some(i) = first_error {
        shown.push(lines[i]);
        if i + 1 < start {
            shown.push("…");
        }
    }
    shown.extend(&lines[start..]);
    shown
        .iter()
        .map(|l| {
            if l.chars().count() > LINE_LIMIT {
                format!("{}…", l.chars().take(LINE_LIMIT).collect::<String>())
            } else {
                (*l).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

impl ChildReader {
    /// Start `cmd` with stdout piped and stderr captured.
    pub fn spawn(tool: &str, mut cmd: Command) -> Result<(ChildReader, ChildKiller)> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {tool}"), e))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Tool {
            tool: tool.into(),
            message: "no stdout pipe".into(),
        })?;
        let (child, stderr) = drain_stderr(tool, child)?;
        let child = Arc::new(Mutex::new(child));
        let killer = ChildKiller(child.clone());
        Ok((
            ChildReader {
                tool: tool.to_string(),
                child,
                stdout,
                stderr,
                finished: false,
                kept_stderr: None,
            },
            killer,
        ))
    }

    /// Keep the tool's stderr of a successful run (e.g. `pg_basebackup -v` reports its
    /// WAL positions there); filled when the stream ends.
    pub fn keep_stderr(&mut self) -> std::sync::Arc<std::sync::Mutex<String>> {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        self.kept_stderr = Some(kept.clone());
        kept
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        // stdout has ended, so the process is exiting: this wait is short.
        let status = self.child().wait()?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            if !stderr.trim().is_empty() {
                tracing::debug!(tool = %self.tool, stderr = %stderr.trim(), "tool stderr");
            }
            if let Some(Ok(mut kept)) = self.kept_stderr.as_ref().map(|k| k.lock()) {
                *kept = stderr;
            }
            return Ok(());
        }
        let tail = stderr_tail(&stderr);
        Err(io::Error::other(format!(
            "{} {status}{}",
            self.tool,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        )))
    }
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if !self.finished {
            let mut child = self.child();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run a tool to completion, returning its stdout; a failure carries its stderr.
pub fn run_tool(tool: &str, mut cmd: Command) -> Result<Vec<u8>> {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("cannot start {tool}"), e))?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: tool.into(),
            message: format!(
                "{}: {}",
                out.status,
                stderr_tail(&String::from_utf8_lossy(&out.stderr))
            ),
        });
    }
    Ok(out.stdout)
}

/// Start `cmd` detached from the caller: in its own process group (so the caller's
/// terminal or service manager signals do not reach it) and reaped by a thread, so a
/// long-lived caller keeps no zombie; a short-lived caller exits first and the child is
/// adopted. For pgvault's own helpers (the WAL pusher and prefetcher).
pub fn spawn_detached(mut cmd: Command, what: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {what}"), e))?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// Take an exclusive `flock` on `path` (created when missing) without waiting: `None`
/// when another process holds it. Held until the returned lock is dropped; the kernel
/// releases it when the holder dies, so a killed holder never blocks a successor.
pub fn try_lock_exclusive(
    path: &std::path::Path,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(Some(held)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(Error::io(
            format!("cannot lock {}", path.display()),
            io::Error::from(errno),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_line_is_kept_with_the_last_ones() {
        let stderr = "pg_dump: error: query failed: ERROR:  permission denied for table secret\n\
            pg_dump: detail: Query was: LOCK TABLE public.secret IN ACCESS SHARE MODE\n\
            pg_dump: a\npg_dump: b\npg_dump: c\n";
        let tail = stderr_tail(stderr);
        assert!(
            tail.starts_with(
                "pg_dump: error: query failed: ERROR:  permission denied for table secret | … |"
            ),
            "{tail}"
        );
        assert!(
            tail.ends_with("pg_dump: a | pg_dump: b | pg_dump: c"),
            "{tail}"
        );
        assert_eq!(stderr_tail("one\ntwo\n"), "one | two");
    }
}
