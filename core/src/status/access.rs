//! Who may read the status page, its JSON API and the reports it links to.
//!
//! On loopback the page is open (only local users reach it). On any other address the
//! agent requires credentials, read from a file so they never appear in a process list:
//! a bearer token (`Authorization: Bearer <token>`) or a `user:password` pair for HTTP
//! basic authentication. Starting on a non-loopback address without either is refused,
//! unless the operator says `--insecure-open` (a network that already restricts who
//! connects). Comparisons take constant time.

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// What a request must present.
#[derive(Clone)]
pub enum Access {
    /// Nothing (loopback, or `--insecure-open`).
    Open,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Open => "Open",
            Access::Bearer(_) => "Bearer(****)",
            Access::Basic { .. } => "Basic(****)",
        })
    }
}

fn read_secret(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read the {what} file {}", path.display()), e))?;
    let secret = text.trim().to_string();
    if secret.len() < 8 {
        return Err(Error::Invalid(format!(
            "the {what} file {} holds {} character(s); use at least 8 (e.g. `openssl rand -hex 32`)",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret)
}

impl Access {
    /// Decide the access rule for `listen` from the options: a token file, a
    /// `user:password` file, or `insecure_open`. Errors say what to do.
    pub fn configure(
        listen: SocketAddr,
        token_file: Option<&Path>,
        basic_file: Option<&Path>,
        insecure_open: bool,
    ) -> Result<Access> {
        match (token_file, basic_file) {
            (Some(_), Some(_)) => Err(Error::Invalid(
                "give --auth-token-file or --basic-auth-file, not both".into(),
            )),
            (Some(path), None) => Ok(Access::Bearer(read_secret(path, "token")?)),
            (None, Some(path)) => {
                let line = read_secret(path, "basic-auth")?;
                let (user, password) = line.split_once(':').ok_or_else(|| {
                    Error::Invalid(format!(
                        "the basic-auth file {} must hold one line user:password",
                        path.display()
                    ))
                })?;
                if user.is_empty() || password.len() < 8 {
                    return Err(Error::Invalid(format!(
                        "the basic-auth file {} needs a user name and a password of at least 8 characters",
                        path.display()
                    )));
                }
                Ok(Access::Basic {
                    user: user.into(),
                    password: password.into(),
                })
            }
            (None, None) if listen.ip().is_loopback() || insecure_open => Ok(Access::Open),
            (None, None) => Err(Error::Invalid(format!(
                "--listen {listen} is reachable from other hosts, and the status page shows every policy's state: give --auth-token-file FILE or --basic-auth-file FILE (user:password), or --insecure-open if the network already restricts who connects"
            ))),
        }
    }

    /// Whether a request with this `Authorization` header value may read the page.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let same = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
        match self {
            Access::Open => true,
            Access::Bearer(token) => authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|given| same(given.trim(), token)),
            Access::Basic { user, password } => authorization
                .and_then(|h| h.strip_prefix("Basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|pair| {
                    pair.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                })
                .is_some_and(|(u, p)| same(&u, user) & same(&p, password)),
        }
    }

    /// The `WWW-Authenticate` challenge for a refused request.
    pub fn challenge(&self) -> &'static str {
        match self {
            Access::Basic { .. } => "Basic realm=\"pgvault\"",
            _ => "Bearer realm=\"pgvault\"",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn non_loopback_needs_credentials_or_an_explicit_open() {
        let public: SocketAddr = "0.0.0.0:9187".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9187".parse().unwrap();
        assert!(matches!(
            Access::configure(local, None, None, false),
            Ok(Access::Open)
        ));
        let err = Access::configure(public, None, None, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--auth-token-file"), "{err}");
        assert!(matches!(
            Access::configure(public, None, None, true),
            Ok(Access::Open)
        ));
        let short = file("abc\n");
        assert!(Access::configure(public, Some(short.path()), None, false).is_err());
    }

    #[test]
    fn tokens_and_basic_credentials_are_checked() {
        let public: SocketAddr = "[::]:9187".parse().unwrap();
        let token = file("0123456789abcdef\n");
        let access = Access::configure(public, Some(token.path()), None, false).unwrap();
        assert!(access.allows(Some("Bearer 0123456789abcdef")));
        assert!(!access.allows(Some("Bearer 0123456789abcdeX")));
        assert!(!access.allows(None));
        assert_eq!(format!("{access:?}"), "Bearer(****)");
        let basic = file("ops:correct-horse\n");
        let access = Access::configure(public, None, Some(basic.path()), false).unwrap();
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ops:correct-horse")
        );
        assert!(access.allows(Some(&header)));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ops:wrong-horse")
        );
        assert!(!access.allows(Some(&wrong)));
        assert!(!access.allows(Some("Bearer 0123456789abcdef")));
    }
}
