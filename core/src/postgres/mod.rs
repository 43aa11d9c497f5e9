//! Everything that talks to PostgreSQL: connection targets, client-tool discovery, the
//! child-process reader for `pg_dump`, and the catalog queries backups and restores need.
//!
//! Passwords never reach a process's arguments: a URL's password is removed from the
//! URL handed to client tools and passed in `PGPASSWORD` instead. When the URL has none,
//! `PGPASSWORD` and the passfile (`PGPASSFILE` or `~/.pgpass`) apply, as in libpq.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod tls;

/// How long pgvault waits to connect to PostgreSQL when the URL sets no
/// `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A PostgreSQL server and database to connect to, with the password held apart.
#[derive(Clone)]
pub struct ConnTarget {
    url: url::Url,
    password: Option<String>,
}

impl std::fmt::Debug for ConnTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

impl std::fmt::Display for ConnTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

impl ConnTarget {
    /// Parse a `postgres://` URL; its password (if any) is kept out of the displayed URL.
    pub fn parse(value: &str) -> Result<ConnTarget> {
        let mut url = url::Url::parse(value).map_err(|e| {
            Error::Invalid(format!(
                "{:?} is not a PostgreSQL URL ({e}); expected postgres://user@host:5432/dbname",
                redact(value)
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::Invalid(format!(
                "{} is not a postgres:// URL",
                redact(value)
            )));
        }
        let password = url.password().map(percent_decode);
        let _ = url.set_password(None);
        Ok(ConnTarget { url, password })
    }

    /// The database the URL names (empty when none).
    pub fn database(&self) -> String {
        percent_decode(self.url.path().trim_start_matches('/'))
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> ConnTarget {
        let mut url = self.url.clone();
        let encoded: String = url::form_urlencoded::byte_serialize(database.as_bytes()).collect();
        url.set_path(&format!("/{}", encoded.replace('+', "%20")));
        ConnTarget {
            url,
            password: self.password.clone(),
        }
    }

    /// The URL without its password, safe to show and to pass as an argument.
    pub fn url_without_password(&self) -> String {
        self.url.to_string()
    }

    /// Host and port, for comparing servers.
    pub fn server(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or("localhost"),
            self.url.port().unwrap_or(5432)
        )
    }

    fn user(&self) -> String {
        let u = percent_decode(self.url.username());
        if !u.is_empty() {
            return u;
        }
        std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".into())
    }

    fn resolved_password(&self) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        if let Ok(p) = std::env::var("PGPASSWORD") {
            return Some(p);
        }
        let host = self.url.host_str().unwrap_or("localhost").to_string();
        let port = self.url.port().unwrap_or(5432).to_string();
        passfile_lookup(&host, &port, &self.database(), &self.user())
    }

    /// Connect with tokio-postgres, with libpq's TLS semantics (the URL's `sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey` and the `PGSSL*` variables, see [`tls`]); the
    /// connection task runs in the background.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (url, settings) = tls::split_url(&self.url, |name| std::env::var(name).ok())
            .map_err(|e| Error::Invalid(format!("connection URL {}: {e}", self.url)))?;
        let mut config = tokio_postgres::Config::from_str(url.as_str())
            .map_err(|e| Error::Invalid(format!("cannot use connection URL {}: {e}", self.url)))?;
        config.user(self.user());
        if let Some(p) = self.resolved_password() {
            config.password(p);
        }
        config.application_name("pgvault");
        if config.get_connect_timeout().is_none() {
            // libpq waits forever by default; pgvault never does (the URL's
            // connect_timeout wins).
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        tls::connect(&config, &settings).await.map_err(|e| {
            let context = format!("cannot connect to {}", self.url);
            match e {
                tls::TlsError::Connect {
                    message, source, ..
                } => Error::Connect {
                    context,
                    message,
                    temporary: crate::error::pg_is_temporary(&source),
                },
                tls::TlsError::Handshake { message, .. } => Error::Connect {
                    context,
                    message: format!("TLS: {message}"),
                    temporary: false,
                },
                setting => Error::Invalid(format!("{context}: {setting}")),
            }
        })
    }

    /// A command for a client tool connecting here: `--dbname=<url without password>`
    /// and the password, if any, in the environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg(format!("--dbname={}", self.url));
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p);
        }
        cmd
    }
}

/// Hide the password of a URL-like string for messages.
pub fn redact(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => value.to_string(),
    }
}

/// libpq's passfile: `host:port:database:user:password`, `*` matches anything, `\`
/// escapes `:` and `\`.
fn passfile_lookup(host: &str, port: &str, database: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut fields = Vec::new();
        let mut current = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        fields.push(current);
        if fields.len() != 5 {
            continue;
        }
        let wanted = [host, port, database, user];
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

/// The PostgreSQL client programs of one installation.
#[derive(Debug, Clone)]
pub struct PgTools {
    dir: PathBuf,
    /// Major version of the tools (e.g. 15).
    pub major: u32,
    /// The full `pg_dump --version` line.
    pub version_line: String,
}

impl PgTools {
    /// Find client tools able to dump or restore a server of major version `server_major`:
    /// the configured `bin_dir`, else the same major in standard locations, else the
    /// lowest newer one. PATH is searched too.
    pub fn discover(bin_dir: Option<&Path>, server_major: u32) -> Result<PgTools> {
        if let Some(dir) = bin_dir {
            let tools = probe(dir).ok_or_else(|| Error::ToolNotFound {
                message: format!(
                    "no working pg_dump in bin_dir {}; point [source] bin_dir at a PostgreSQL bin directory",
                    dir.display()
                ),
            })?;
            if tools.major < server_major {
                return Err(Error::ToolNotFound {
                    message: format!(
                        "pg_dump in {} is version {}, older than the server ({server_major}); use tools of version {server_major} or newer",
                        dir.display(),
                        tools.major
                    ),
                });
            }
            return Ok(tools);
        }
        let mut found: Vec<PgTools> = candidate_dirs().iter().filter_map(|d| probe(d)).collect();
        found.sort_by_key(|t| t.major);
        let seen: Vec<String> = found
            .iter()
            .map(|t| format!("{} in {}", t.major, t.dir.display()))
            .collect();
        found
            .iter()
            .find(|t| t.major == server_major)
            .or_else(|| found.iter().find(|t| t.major > server_major))
            .cloned()
            .ok_or_else(|| Error::ToolNotFound {
                message: format!(
                    "no PostgreSQL client tools of version {server_major} or newer found (found: {}); install postgresql-client-{server_major} or set [source] bin_dir",
                    if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
                ),
            })
    }

    /// Path of a tool in this installation.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory holding the tools.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Directories that may hold a PostgreSQL installation's programs: Debian and RHEL
/// locations, `/usr/local/pgsql`, then PATH.
pub(crate) fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for pattern_root in ["/usr/lib/postgresql", "/usr/local/pgsql"] {
        if let Ok(entries) = std::fs::read_dir(pattern_root) {
            for e in entries.flatten() {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("pgsql-") {
                dirs.push(e.path().join("bin"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

fn probe(dir: &Path) -> Option<PgTools> {
    let out = Command::new(dir.join("pg_dump"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major = parse_major(&line)?;
    // Follow symlinks (Debian's /usr/bin wrappers) so the directory holds the real tools.
    let real = std::fs::canonicalize(dir.join("pg_dump")).ok()?;
    let real_dir = real.parent()?.to_path_buf();
    let dir = if real_dir.join("pg_restore").exists() {
        real_dir
    } else {
        dir.to_path_buf()
    };
    Some(PgTools {
        dir,
        major,
        version_line: line,
    })
}

/// The major version in a `pg_dump (PostgreSQL) 15.18 (Debian …)` line.
pub fn parse_major(version_line: &str) -> Option<u32> {
    let version = version_line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Reads a child's stdout and, at its end, fails unless the child exited successfully:
/// a partial stream from a failed `pg_dump` is never mistaken for a complete one.
/// stderr is drained on its own thread so the pipes cannot deadlock. Dropping the
/// reader early kills the child.
pub struct ChildReader {
    tool: String,
    child: Child,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<String>>,
    finished: bool,
    kept_stderr: Option<std::sync::Arc<std::sync::Mutex<String>>>,
}

/// Handle that can kill a [`ChildReader`]'s process from another task.
#[derive(Debug, Clone, Copy)]
pub struct ChildKiller(u32);

impl ChildKiller {
    /// Kill the process (SIGKILL); its reader then fails at the end of the stream.
    pub fn kill(&self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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
        let killer = ChildKiller(child.id());
        let (child, stderr) = drain_stderr(tool, child)?;
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

    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        let status = self.child.wait()?;
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
            let _ = self.child.kill();
            let _ = self.child.wait();
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

/// Facts about the source server and database recorded in the manifest.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: i32,
    /// Cluster system identifier.
    pub system_identifier: String,
    /// `current_database()`.
    pub database: String,
    /// Encoding of the database.
    pub encoding: String,
}

impl ServerInfo {
    /// Major version (15 for 150018).
    pub fn major(&self) -> u32 {
        (self.version_num / 10000) as u32
    }
}

/// Query [`ServerInfo`] on a connection.
pub async fn server_info(client: &tokio_postgres::Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "select current_setting('server_version'), current_setting('server_version_num')::int, \
             (select system_identifier::text from pg_control_system()), current_database()::text, \
             pg_encoding_to_char(encoding)::text from pg_database where datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot read server version", e))?;
    Ok(ServerInfo {
        version: row.get(0),
        version_num: row.get(1),
        system_identifier: row.get(2),
        database: row.get(3),
        encoding: row.get(4),
    })
}

/// The exact row count of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// `count(*)`.
    pub rows: i64,
}

/// Exact row counts of every user table, in schema/table order. Run it inside the
/// backup's snapshot so the counts match the dump exactly.
pub async fn table_row_counts(client: &tokio_postgres::Client) -> Result<Vec<TableCount>> {
    let tables = client
        .query(
            "select n.nspname::text, c.relname::text from pg_class c \
             join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') \
             and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp\\_%' \
             and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass \
                             and d.objid = c.oid and d.deptype = 'e') \
             order by 1, 2",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot list tables", e))?;
    let mut counts = Vec::with_capacity(tables.len());
    for t in tables {
        let schema: String = t.get(0);
        let table: String = t.get(1);
        let sql = format!(
            "select count(*) from {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| Error::pg(format!("cannot count rows of {schema}.{table}"), e))?;
        counts.push(TableCount {
            schema,
            table,
            rows: row.get(0),
        });
    }
    Ok(counts)
}

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_kept_out_of_the_url() {
        let t =
            ConnTarget::parse("postgres://backup:s%3Acret@db:5433/app?sslmode=disable").unwrap();
        assert_eq!(
            t.url_without_password(),
            "postgres://backup@db:5433/app?sslmode=disable"
        );
        assert_eq!(t.password.as_deref(), Some("s:cret"));
        assert_eq!(t.database(), "app");
        assert_eq!(t.with_database("other db").database(), "other db");
        assert!(!format!("{t} {t:?}").contains("cret"));
    }

    #[test]
    fn majors_parse() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17beta1"), Some(17));
    }

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

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:****@h/db");
    }
}
