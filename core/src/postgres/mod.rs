//! Talking to PostgreSQL over its protocol: connection targets (with TLS, see [`tls`]),
//! the catalog queries backups and restores need, and SQL quoting. Finding and running
//! PostgreSQL's programs is [`crate::server`]'s job.
//!
//! Passwords never reach a process's arguments: a URL's password is removed from the
//! URL handed to client tools and passed in `PGPASSWORD` instead. When the URL has none,
//! `PGPASSWORD` and the passfile (`PGPASSFILE` or `~/.pgpass`) apply, as in libpq.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

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

/// Percent-decode a URL part as libpq does: `%XX` only, never `+` as a space (a `+` in a
/// password, user or database name is a `+`). An invalid `%` sequence stays as written.
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// What a database name must escape to be one URL path segment: everything but
/// letters, digits and `-._~`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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
        let encoded = percent_encoding::utf8_percent_encode(database, PATH_SEGMENT);
        url.set_path(&format!("/{encoded}"));
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

/// The server's WAL segment size in bytes (`wal_segment_size`), which names and sizes
/// every WAL file.
pub async fn wal_segment_size(client: &tokio_postgres::Client) -> Result<u64> {
    let size: i64 = client
        .query_one(
            "select setting::bigint from pg_settings where name = 'wal_segment_size'",
            &[],
        )
        .await
        .map_err(|e| Error::pg("cannot read wal_segment_size", e))?
        .get(0);
    Ok(size as u64)
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
    fn a_plus_in_a_url_stays_a_plus() {
        let t = ConnTarget::parse("postgres://us+er:pa+ss%2B@db/app+1%20x").unwrap();
        assert_eq!(t.password.as_deref(), Some("pa+ss+"));
        assert_eq!(t.user(), "us+er");
        assert_eq!(t.database(), "app+1 x");
        let other = t.with_database("a+b c/d");
        assert_eq!(other.database(), "a+b c/d");
        assert_eq!(
            other.url_without_password(),
            "postgres://us+er@db/a%2Bb%20c%2Fd"
        );
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:****@h/db");
    }
}
