//! TLS for every PostgreSQL connection pgvault opens, with libpq's semantics.
//!
//! Managed PostgreSQL services (RDS, Cloud SQL, Azure, Supabase, Neon) require TLS, and
//! their users write libpq connection URLs: `?sslmode=verify-full&sslrootcert=/ca.pem`.
//! tokio-postgres alone knows only `disable`/`prefer`/`require`, no certificate files, and
//! comes with no TLS implementation. This module closes that gap so that one URL means the
//! same thing to pgvault as to `psql` and `pg_dump`:
//!
//! 1. [`split_url`] takes the `ssl*` parameters out of a `postgres://` URL (falling back to
//!    `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, … and to the default files in
//!    `~/.postgresql/`, as libpq does) and returns the URL tokio-postgres can parse plus the
//!    [`TlsSettings`]. [`TlsSettings::from_params`] is the same logic as a pure function.
//! 2. [`TlsSettings::connector`] reads the certificate files once and builds the rustls
//!    configuration (aws-lc-rs as the crypto provider, chosen explicitly).
//! 3. [`TlsConnector::connect`] (or the shortcut [`connect`]) opens the connection with the
//!    sslmode's behaviour (`allow` and `prefer` fall back like libpq), spawns the connection
//!    task, and turns every failure into one line naming the server and what to do.
//!
//! sslmode mapping: `disable` never uses TLS; `allow` tries plain first and retries with TLS
//! when the server refuses; `prefer` uses TLS when the server offers it (and retries plain if
//! the server refuses the TLS session, as libpq does); `require` insists on TLS; `verify-ca`
//! additionally checks the certificate chain against the root certificate(s); `verify-full`
//! also checks the host name (IP SANs for an IP host). As in libpq, a root certificate file
//! given (or present at `~/.postgresql/root.crt`) makes `allow`, `prefer` and `require`
//! verify the chain too, and `sslrootcert=system` (the OS trust store) demands `verify-full`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::percent_decode;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme, SupportedProtocolVersion,
};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The valid `sslmode` values, for error messages.
const SSLMODE_VALUES: &str = "disable, allow, prefer, require, verify-ca, verify-full";

/// Why TLS settings could not be used or a connection could not be opened.
///
/// Every variant displays as one line that names the setting, file or server and, where
/// the user can fix the cause, how.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS parameter or environment variable has a value pgvault cannot use (unknown
    /// sslmode, a weak sslmode with `sslrootcert=system`, a missing root certificate for
    /// `verify-ca`/`verify-full`, an unsupported parameter, …).
    #[error("{0}")]
    Setting(String),

    /// A certificate or key file could not be read.
    #[error("cannot read {what} {}: {}", path.display(), io_text(source))]
    File {
        /// The parameter naming the file: `sslrootcert`, `sslcert` or `sslkey`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A certificate or key file was read but cannot be used (no PEM item, wrong
    /// permissions, key not matching the certificate, …).
    #[error("{what} {}: {message}", path.display())]
    Pem {
        /// The parameter naming the file: `sslrootcert`, `sslcert` or `sslkey`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// TLS with the server failed: it refused TLS although the sslmode requires it, or its
    /// certificate did not pass verification, or it rejected ours. Not worth retrying.
    #[error("TLS to {target}: {message}")]
    Handshake {
        /// The server(s), `host:port`.
        target: String,
        /// What failed and how to fix it.
        message: String,
    },

    /// The connection failed for another reason: network, authentication, the server's
    /// refusal. The driver error is kept so callers can classify it (see
    /// [`TlsError::is_retryable`]).
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// The server(s), `host:port`.
        target: String,
        /// The failure on one line.
        message: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl TlsError {
    /// Whether trying again later may succeed: network failures may, while bad settings,
    /// certificate problems and the server's refusals (authentication, pg_hba) will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            TlsError::Connect { source, .. } => source.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// libpq's `sslmode`: whether to use TLS and how much of the server's certificate to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try without TLS; if the server refuses the connection, try again with TLS.
    Allow,
    /// Use TLS if the server offers it (libpq's default).
    Prefer,
    /// Insist on TLS; the certificate is not verified unless a root certificate is given.
    Require,
    /// Insist on TLS and verify the certificate chain, not the host name.
    VerifyCa,
    /// Insist on TLS and verify the certificate chain and the host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling, as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the certificates that may sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// None: the server's certificate is not verified (`allow`, `prefer`, `require`).
    None,
    /// A PEM file (`sslrootcert`, `PGSSLROOTCERT` or `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::None => f.write_str("no root certificate"),
            RootCerts::File(p) => write!(f, "{}", p.display()),
            RootCerts::System => f.write_str("the system trust store"),
        }
    }
}

/// How much of the server's certificate is checked, derived from the sslmode and whether a
/// root certificate is available (libpq verifies the chain whenever one is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Any certificate is accepted (the handshake signatures are still checked).
    None,
    /// The chain must lead to a root certificate; the host name is not checked.
    Chain,
    /// The chain must lead to a root certificate and the certificate must name the host.
    ChainAndName,
}

/// The TLS versions allowed (`ssl_min_protocol_version`, `ssl_max_protocol_version`).
/// rustls implements TLS 1.2 and 1.3 only, which is also libpq's default minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Versions {
    tls12: bool,
    tls13: bool,
}

/// The TLS settings of one connection URL, resolved as libpq resolves them.
///
/// Built by [`split_url`] or [`TlsSettings::from_params`]; certificate files are only
/// located here, and read by [`TlsSettings::connector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    mode: SslMode,
    root: RootCerts,
    client_cert: Option<(PathBuf, PathBuf)>,
    sni: bool,
    versions: Versions,
}

/// The URL query parameters (and their environment variables) this module handles; they are
/// removed from the URL given to tokio-postgres.
const HANDLED: &[(&str, Option<&str>)] = &[
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslsni", Some("PGSSLSNI")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcertmode", Some("PGSSLCERTMODE")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslpassword", None),
];

/// One setting's value and where it came from, for messages.
struct Found {
    value: String,
    origin: String,
}

impl TlsSettings {
    /// The settings that plain `postgres://host/db` gets with no `PG*` variables and no
    /// `~/.postgresql` files: `prefer`, nothing verified.
    pub fn prefer() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Prefer,
            root: RootCerts::None,
            client_cert: None,
            sni: true,
            versions: Versions {
                tls12: true,
                tls13: true,
            },
        }
    }

    /// Resolve the TLS settings from URL query parameters (already percent-decoded; pairs
    /// that are not TLS parameters are ignored), falling back to the `PGSSL*` environment
    /// variables read through `env` and to the default files in `$HOME/.postgresql/` that
    /// `file_exists` reports as present. Pure: it touches neither the real environment nor
    /// the file system, so every libpq rule is unit-testable.
    pub fn from_params<K, V>(
        params: impl IntoIterator<Item = (K, V)>,
        env: impl Fn(&str) -> Option<String>,
        file_exists: impl Fn(&Path) -> bool,
    ) -> Result<TlsSettings, TlsError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut url_values: Vec<(&'static str, String)> = Vec::new();
        for (key, value) in params {
            if let Some((name, _)) = HANDLED.iter().find(|(n, _)| *n == key.as_ref()) {
                // A later occurrence wins, as in libpq.
                url_values.retain(|(n, _)| n != name);
                url_values.push((*name, value.as_ref().to_string()));
            }
        }
        let get = |name: &'static str| -> Option<Found> {
            if let Some((_, v)) = url_values.iter().find(|(n, _)| *n == name) {
                return Some(Found {
                    value: v.clone(),
                    origin: "in the connection URL".to_string(),
                });
            }
            let var = HANDLED
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| *v)?;
            env(var).map(|value| Found {
                value,
                origin: format!("in environment variable {var}"),
            })
        };
        // libpq treats an empty file name as "use the default file".
        let nonempty = |f: Option<Found>| f.filter(|f| !f.value.is_empty());

        for name in ["sslcrl", "sslcrldir", "sslpassword"] {
            if let Some(f) = nonempty(get(name)) {
                return Err(TlsError::Setting(format!(
                    "{name} is set ({}) but pgvault does not support it; remove it{}",
                    f.origin,
                    match name {
                        "sslpassword" =>
                            " and decrypt the key (openssl pkey -in KEY -out KEY.decrypted)",
                        _ => " (certificate revocation lists are not checked)",
                    }
                )));
            }
        }

        let home_dir = env("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".postgresql"));
        let default_file = |name: &str| home_dir.as_ref().map(|d| d.join(name));

        let root = match nonempty(get("sslrootcert")) {
            Some(f) if f.value == "system" => RootCerts::System,
            Some(f) => RootCerts::File(PathBuf::from(f.value)),
            None => match default_file("root.crt") {
                Some(p) if file_exists(&p) => RootCerts::File(p),
                _ => RootCerts::None,
            },
        };

        let mode = match nonempty(get("sslmode")) {
            Some(f) => SslMode::parse(&f.value).ok_or_else(|| {
                TlsError::Setting(format!(
                    "invalid sslmode {:?} {}: valid values are {SSLMODE_VALUES}",
                    f.value, f.origin
                ))
            })?,
            None if root == RootCerts::System => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root == RootCerts::System && mode != SslMode::VerifyFull {
            return Err(TlsError::Setting(format!(
                "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
            )));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root == RootCerts::None {
            let expected = match default_file("root.crt") {
                Some(p) => format!("{} does not exist", p.display()),
                None => "HOME is not set, so ~/.postgresql/root.crt cannot be used".to_string(),
            };
            return Err(TlsError::Setting(format!(
                "sslmode={mode} needs the CA certificate that signed the server's certificate, but no sslrootcert is given and {expected}: give the CA's PEM file with sslrootcert=/path/to/ca.crt in the URL (or PGSSLROOTCERT), use sslrootcert=system to trust the system's CAs, or use sslmode=require to skip verification"
            )));
        }

        let cert_mode = nonempty(get("sslcertmode"));
        let send_cert = match cert_mode.as_ref().map(|f| f.value.as_str()) {
            None | Some("allow") => true,
            Some("disable") => false,
            Some("require") => {
                return Err(TlsError::Setting(
                    "sslcertmode=require is not supported by pgvault; use sslcertmode=allow (the default) with sslcert and sslkey".to_string(),
                ))
            }
            Some(other) => {
                return Err(TlsError::Setting(format!(
                    "invalid sslcertmode {other:?}{}: valid values are disable, allow, require",
                    cert_mode.as_ref().map(|f| format!(" {}", f.origin)).unwrap_or_default()
                )))
            }
        };
        let cert = match nonempty(get("sslcert")) {
            Some(f) => Some(PathBuf::from(f.value)),
            None => default_file("postgresql.crt").filter(|p| file_exists(p)),
        };
        let client_cert = match cert {
            Some(cert) if send_cert && mode != SslMode::Disable => {
                let key = match nonempty(get("sslkey")) {
                    Some(f) => PathBuf::from(f.value),
                    None => match default_file("postgresql.key") {
                        Some(p) if file_exists(&p) => p,
                        other => {
                            return Err(TlsError::Setting(format!(
                                "client certificate {} is given but no private key: give it with sslkey=/path/to/client.key (or PGSSLKEY){}",
                                cert.display(),
                                other
                                    .map(|p| format!("; {} does not exist", p.display()))
                                    .unwrap_or_default()
                            )))
                        }
                    },
                };
                Some((cert, key))
            }
            _ => None,
        };

        let sni = nonempty(get("sslsni")).is_none_or(|f| f.value == "1");

        let version_value = |name: &'static str| -> Result<Option<u8>, TlsError> {
            let Some(f) = nonempty(get(name)) else {
                return Ok(None);
            };
            match f.value.to_ascii_lowercase().as_str() {
                "tlsv1" => Ok(Some(10)),
                "tlsv1.1" => Ok(Some(11)),
                "tlsv1.2" => Ok(Some(12)),
                "tlsv1.3" => Ok(Some(13)),
                _ => Err(TlsError::Setting(format!(
                    "invalid {name} {:?} {}: valid values are TLSv1, TLSv1.1, TLSv1.2, TLSv1.3",
                    f.value, f.origin
                ))),
            }
        };
        let min = version_value("ssl_min_protocol_version")?.unwrap_or(12);
        let max = version_value("ssl_max_protocol_version")?.unwrap_or(13);
        if max < 12 {
            return Err(TlsError::Setting(
                "ssl_max_protocol_version is below TLSv1.2, but pgvault supports only TLSv1.2 and TLSv1.3".to_string(),
            ));
        }
        if min > max {
            return Err(TlsError::Setting(
                "ssl_min_protocol_version is greater than ssl_max_protocol_version".to_string(),
            ));
        }
        let versions = Versions {
            tls12: min <= 12,
            tls13: max >= 13,
        };

        Ok(TlsSettings {
            mode,
            root,
            client_cert,
            sni,
            versions,
        })
    }

    /// The sslmode in force (given, from `PGSSLMODE`, or the default).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Where root certificates come from.
    pub fn root(&self) -> &RootCerts {
        &self.root
    }

    /// The client certificate and key files, when a client certificate will be offered.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// How much of the server's certificate is checked. As in libpq, an available root
    /// certificate makes `allow`, `prefer` and `require` verify the chain (`verify-ca`).
    pub fn verification(&self) -> Verification {
        match self.mode {
            SslMode::VerifyFull => Verification::ChainAndName,
            SslMode::VerifyCa => Verification::Chain,
            SslMode::Disable => Verification::None,
            SslMode::Allow | SslMode::Prefer | SslMode::Require => match self.root {
                RootCerts::None => Verification::None,
                _ => Verification::Chain,
            },
        }
    }

    /// A one-line summary for logs, e.g. `verify-full, root /etc/ca.crt, client cert /c.crt`.
    pub fn describe(&self) -> String {
        let mut parts = vec![match (self.mode, self.verification()) {
            (SslMode::Disable, _) => "disable (no TLS)".to_string(),
            (SslMode::Require, Verification::Chain) => {
                "verify-ca (sslmode=require with a root certificate)".to_string()
            }
            (SslMode::Allow | SslMode::Prefer | SslMode::Require, Verification::None) => {
                format!("{} (certificate not verified)", self.mode)
            }
            (SslMode::Allow | SslMode::Prefer, _) => {
                format!(
                    "{} (certificate chain verified when TLS is used)",
                    self.mode
                )
            }
            (mode, _) => mode.to_string(),
        }];
        if self.mode != SslMode::Disable {
            if self.root != RootCerts::None {
                parts.push(format!("root {}", self.root));
            }
            if let Some((cert, _)) = &self.client_cert {
                parts.push(format!("client cert {}", cert.display()));
            }
            if !self.versions.tls12 {
                parts.push("TLS 1.3 only".to_string());
            } else if !self.versions.tls13 {
                parts.push("TLS 1.2 only".to_string());
            }
            if !self.sni {
                parts.push("no SNI".to_string());
            }
        }
        parts.join(", ")
    }

    /// Read the certificate files and build the rustls configuration, once, before
    /// connecting (reading a few small PEM files is the only blocking I/O). The result can
    /// open any number of connections.
    pub fn connector(&self) -> Result<TlsConnector, TlsError> {
        let rustls = if self.mode == SslMode::Disable {
            None
        } else {
            Some(MakeRustlsConnect::new(self.rustls_config()?))
        };
        Ok(TlsConnector {
            settings: self.clone(),
            rustls,
        })
    }

    fn rustls_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.verification() {
            Verification::None => Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
            Verification::Chain => Arc::new(VerifyChainOnly(self.webpki_verifier(&provider)?)),
            Verification::ChainAndName => self.webpki_verifier(&provider)?,
        };
        let mut versions: Vec<&'static SupportedProtocolVersion> = Vec::new();
        if self.versions.tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if self.versions.tls12 {
            versions.push(&rustls::version::TLS12);
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| TlsError::Setting(format!("cannot configure TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert_path, key_path)) => {
                let chain = read_certificates("sslcert", cert_path)?;
                let key = read_key(key_path)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => TlsError::Pem {
                            what: "sslkey",
                            path: key_path.clone(),
                            message: format!(
                                "this key does not belong to the certificate in sslcert {}",
                                cert_path.display()
                            ),
                        },
                        other => TlsError::Pem {
                            what: "sslkey",
                            path: key_path.clone(),
                            message: format!("cannot be used: {other}"),
                        },
                    })?
            }
        };
        config.enable_sni = self.sni;
        // PostgreSQL 17 checks the ALPN protocol (required with sslnegotiation=direct);
        // older servers ignore it. libpq 17 sends the same.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }

    fn webpki_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.root {
            RootCerts::None => {
                return Err(TlsError::Setting(
                    "certificate verification needs a root certificate (sslrootcert)".to_string(),
                ))
            }
            RootCerts::File(path) => {
                let (added, _ignored) =
                    roots.add_parsable_certificates(read_certificates("sslrootcert", path)?);
                if added == 0 {
                    return Err(TlsError::Pem {
                        what: "sslrootcert",
                        path: path.clone(),
                        message: "holds no usable CA certificate".to_string(),
                    });
                }
            }
            RootCerts::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default();
                    return Err(TlsError::Setting(format!(
                        "sslrootcert=system: no trusted CA certificates found on this system{why}; install the ca-certificates package or set SSL_CERT_FILE"
                    )));
                }
            }
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| {
                TlsError::Setting(format!(
                    "cannot verify certificates with {}: {e}",
                    self.root
                ))
            })
    }
}

/// Read every certificate of a PEM file.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::File {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: format!("is not a valid PEM file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
        });
    }
    Ok(certs)
}

/// Read a private key (PKCS#8, PKCS#1 or SEC1 PEM), refusing files others can read, as
/// libpq does.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_error = |source| TlsError::File {
        what: "sslkey",
        path: path.to_path_buf(),
        source,
    };
    let pem_error = |message: String| TlsError::Pem {
        what: "sslkey",
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(file_error)?;
    if !meta.is_file() {
        return Err(pem_error("is not a regular file".to_string()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        // libpq: root-owned keys may be 0640 (shared through a group), others 0600.
        let bad = if meta.uid() == 0 {
            mode & 0o037 != 0
        } else {
            mode & 0o077 != 0
        };
        if bad {
            return Err(pem_error(format!(
                "has group or world access (mode {:o}); it must be u=rw (0600) or less, or u=rw,g=r (0640) or less if owned by root: run chmod 0600 {}",
                mode & 0o777,
                path.display()
            )));
        }
    }
    let bytes = std::fs::read(path).map_err(file_error)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        pem_error(match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM expected; encrypted keys are not supported: decrypt it with openssl pkey -in KEY -out KEY.decrypted)".to_string(),
            other => format!("is not a valid PEM key file ({other})"),
        })
    })
}

/// Remove the TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslsni`,
/// `sslcompression`, `sslcertmode`, `ssl_min_protocol_version`, `ssl_max_protocol_version`,
/// and the unsupported `sslcrl`, `sslcrldir`, `sslpassword`) from a `postgres://` URL, so
/// that `tokio_postgres::Config::from_str` accepts it, and resolve them with libpq's rules.
///
/// `env` reads environment variables (pass `|k| std::env::var(k).ok()`); the default files
/// in `$HOME/.postgresql/` are looked up on the file system. The other query parameters are
/// kept byte for byte (tokio-postgres, like libpq, does not read `+` as a space).
pub fn split_url(
    url: &url::Url,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(url::Url, TlsSettings), TlsError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut tls_params: Vec<(String, String)> = Vec::new();
    for segment in url.query().unwrap_or("").split('&') {
        if segment.is_empty() {
            continue;
        }
        let (raw_key, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
        let key = percent_decode(raw_key);
        if HANDLED.iter().any(|(name, _)| *name == key) {
            tls_params.push((key, percent_decode(raw_value)));
        } else {
            kept.push(segment);
        }
    }
    let settings = TlsSettings::from_params(tls_params, env, |p| p.is_file())?;
    let mut stripped = url.clone();
    if kept.is_empty() {
        stripped.set_query(None);
    } else {
        stripped.set_query(Some(&kept.join("&")));
    }
    Ok((stripped, settings))
}

/// Connect with the given settings: the shortcut for one connection
/// (`settings.connector()?.connect(config)`). The connection task is spawned on the
/// current tokio runtime; the returned client is ready to use.
pub async fn connect(
    config: &tokio_postgres::Config,
    settings: &TlsSettings,
) -> Result<tokio_postgres::Client, TlsError> {
    settings.connector()?.connect(config).await
}

/// TLS settings with their certificates loaded: opens PostgreSQL connections. Cheap to
/// clone; build it once with [`TlsSettings::connector`] and reuse it.
#[derive(Clone)]
pub struct TlsConnector {
    settings: TlsSettings,
    rustls: Option<MakeRustlsConnect>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.settings.describe())
    }
}

/// One failed connection attempt, with whether the server had agreed to TLS.
struct Failure {
    error: tokio_postgres::Error,
    tls_started: bool,
}

impl TlsConnector {
    /// The settings this connector applies.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Open a connection to the server(s) of `config` (whose own sslmode is overridden)
    /// with this sslmode's behaviour, spawn its connection task on the current tokio
    /// runtime, and return the client. The host name checked by `verify-full` is the
    /// config's host (not `hostaddr`), as in libpq. Unix-socket hosts never use TLS, as in
    /// libpq. Failures come back as one line naming the server and the fix.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::Client, TlsError> {
        let target = target_label(config);
        let rustls = match &self.rustls {
            Some(r) if !only_unix_sockets(config) => r,
            _ => {
                return self
                    .plain(config)
                    .await
                    .map_err(|f| self.explain(f, &target, false))
            }
        };
        match self.settings.mode {
            SslMode::Disable => self
                .plain(config)
                .await
                .map_err(|f| self.explain(f, &target, false)),
            SslMode::Allow => match self.plain(config).await {
                Ok(client) => Ok(client),
                // The server answered (refused): libpq retries with TLS.
                Err(first) if first.error.as_db_error().is_some() => {
                    match self.tls(config, rustls, PgSslMode::Require).await {
                        Ok(client) => Ok(client),
                        Err(second) if !second.tls_started => {
                            Err(self.explain(first, &target, false))
                        }
                        Err(second) => Err(self.explain(second, &target, true)),
                    }
                }
                Err(first) => Err(self.explain(first, &target, false)),
            },
            SslMode::Prefer => match self.tls(config, rustls, PgSslMode::Prefer).await {
                Ok(client) => Ok(client),
                // The server refused the TLS session (e.g. only hostnossl in pg_hba.conf):
                // libpq retries without TLS.
                Err(first) if first.tls_started && first.error.as_db_error().is_some() => {
                    match self.plain(config).await {
                        Ok(client) => Ok(client),
                        Err(_) => Err(self.explain(first, &target, true)),
                    }
                }
                Err(first) => Err(self.explain(first, &target, true)),
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => self
                .tls(config, rustls, PgSslMode::Require)
                .await
                .map_err(|f| self.explain(f, &target, true)),
        }
    }

    async fn plain(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<tokio_postgres::Client, Failure> {
        let mut config = config.clone();
        config.ssl_mode(PgSslMode::Disable);
        let (client, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|error| Failure {
                    error,
                    tls_started: false,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    async fn tls(
        &self,
        config: &tokio_postgres::Config,
        rustls: &MakeRustlsConnect,
        mode: PgSslMode,
    ) -> Result<tokio_postgres::Client, Failure> {
        let mut config = config.clone();
        config.ssl_mode(mode);
        let started = Arc::new(AtomicBool::new(false));
        let tls = TrackedTls {
            inner: rustls.clone(),
            started: started.clone(),
        };
        let (client, connection) = config.connect(tls).await.map_err(|error| Failure {
            error,
            tls_started: started.load(Ordering::SeqCst),
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// Turn a failed attempt into one line: walk the error's source chain for the rustls
    /// error (directly, or inside the `std::io::Error` tokio-rustls wraps it in), the
    /// server's error, or the I/O error.
    fn explain(&self, failure: Failure, target: &str, tls_requested: bool) -> TlsError {
        let Failure { error, tls_started } = failure;
        let handshake = |message: String| TlsError::Handshake {
            target: target.to_string(),
            message,
        };
        if let Some(db) = error.as_db_error() {
            let mut message = format!("{}: {}", db.severity(), one_line(db.message()));
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" (hint: {})", one_line(hint)));
            }
            if !tls_started
                && db.code()
                    == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && db.message().contains("no encryption")
            {
                message.push_str(&format!(
                    " (the server accepts only TLS connections here but sslmode={}: use sslmode=require or stronger)",
                    self.settings.mode
                ));
            } else if tls_started
                && db.code()
                    == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && db.message().contains("SSL encryption")
            {
                message.push_str(&format!(
                    " (the server accepts this user only without TLS here but sslmode={}: use sslmode=prefer, or add a hostssl line to pg_hba.conf)",
                    self.settings.mode
                ));
            } else if db.message().contains("requires a valid client certificate") {
                message.push_str(" (give a client certificate with sslcert and sslkey)");
            }
            return TlsError::Connect {
                target: target.to_string(),
                message,
                source: error,
            };
        }

        let mut io_error: Option<&io::Error> = None;
        let mut innermost = String::new();
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = current {
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return handshake(self.rustls_message(r));
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return handshake(self.rustls_message(r));
                }
                io_error.get_or_insert(io);
            }
            innermost = e.to_string();
            current = e.source();
        }

        if tls_requested && !tls_started && io_error.is_none() {
            if innermost.contains("does not support TLS") {
                return handshake(format!(
                    "the server does not accept TLS connections but sslmode={}",
                    self.settings.mode
                ));
            }
            if innermost.contains("no hostname") {
                return handshake(
                    "TLS needs the server's host name: give host= (hostaddr alone cannot be verified)"
                        .to_string(),
                );
            }
        }
        let message = match io_error {
            Some(io) if tls_started => format!(
                "the connection failed during the TLS handshake: {}",
                io_text(io)
            ),
            Some(io) => io_text(io),
            None => one_line(&error.to_string()),
        };
        TlsError::Connect {
            target: target.to_string(),
            message,
            source: error,
        }
    }

    fn rustls_message(&self, error: &rustls::Error) -> String {
        let root = &self.settings.root;
        let cert = self
            .settings
            .client_cert
            .as_ref()
            .map(|(c, _)| c.display().to_string());
        match error {
            rustls::Error::InvalidCertificate(e) => certificate_message(e, root),
            rustls::Error::NoCertificatesPresented => {
                "the server sent no certificate".to_string()
            }
            rustls::Error::AlertReceived(alert) => {
                let name = alert_name(*alert);
                match (alert, cert) {
                    (AlertDescription::CertificateRequired, None) => {
                        format!("the server requires a client certificate (alert {name}): give sslcert and sslkey")
                    }
                    (AlertDescription::UnknownCA, Some(cert)) => format!(
                        "the server rejected the client certificate {cert}: it is not signed by a CA in the server's ssl_ca_file (alert {name})"
                    ),
                    (
                        AlertDescription::BadCertificate
                        | AlertDescription::UnsupportedCertificate
                        | AlertDescription::CertificateRevoked
                        | AlertDescription::CertificateExpired
                        | AlertDescription::CertificateUnknown
                        | AlertDescription::AccessDenied
                        | AlertDescription::DecryptError,
                        Some(cert),
                    ) => format!("the server rejected the client certificate {cert} (alert {name})"),
                    (
                        AlertDescription::ProtocolVersion
                        | AlertDescription::InsufficientSecurity
                        | AlertDescription::HandshakeFailure,
                        _,
                    ) => format!(
                        "the server and pgvault share no TLS version or cipher suite (alert {name}); pgvault offers TLS 1.2 and 1.3 with modern ciphers"
                    ),
                    (AlertDescription::NoApplicationProtocol, _) => format!(
                        "the server refused the ALPN protocol \"postgresql\" (alert {name})"
                    ),
                    _ => format!("the server aborted the TLS handshake (alert {name})"),
                }
            }
            rustls::Error::PeerIncompatible(_) => format!(
                "the server's TLS is not compatible with pgvault's (TLS 1.2 or 1.3 required): {error}"
            ),
            other => format!("the TLS handshake failed: {other}"),
        }
    }
}

/// Explain a rejected server certificate.
fn certificate_message(error: &CertificateError, root: &RootCerts) -> String {
    match error {
        CertificateError::UnknownIssuer => {
            format!("the server's certificate is not signed by a CA in {root} (unknown issuer)")
        }
        CertificateError::NotValidForNameContext { expected, presented } => {
            let names: Vec<String> = presented.iter().map(|n| presented_name(n)).collect();
            if names.is_empty() {
                format!(
                    "the server's certificate names no host (no subjectAltName), so it cannot be for \"{}\" (name mismatch; use sslmode=verify-ca)",
                    expected.to_str()
                )
            } else {
                format!(
                    "the server's certificate is for {}, not \"{}\" (name mismatch; use the name on the certificate, or sslmode=verify-ca)",
                    names.join(", "),
                    expected.to_str()
                )
            }
        }
        CertificateError::NotValidForName => {
            "the server's certificate is not for this host name (name mismatch; use the name on the certificate, or sslmode=verify-ca)".to_string()
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the server's certificate expired on {} (it is now {}); the server needs a renewed certificate",
            utc(*not_after),
            utc(*time)
        ),
        CertificateError::Expired => "the server's certificate has expired".to_string(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the server's certificate is not valid until {} (it is now {}); check the clocks",
            utc(*not_before),
            utc(*time)
        ),
        CertificateError::NotValidYet => "the server's certificate is not valid yet".to_string(),
        CertificateError::Revoked => "the server's certificate has been revoked".to_string(),
        CertificateError::BadSignature => {
            "the server's certificate has an invalid signature".to_string()
        }
        CertificateError::BadEncoding => "the server's certificate is malformed".to_string(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server's certificate is not for TLS servers (its extendedKeyUsage lacks serverAuth)".to_string()
        }
        CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => format!(
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE); pgvault (rustls) does not accept a CA certificate as a server certificate even when it is in {root}: give the server a certificate signed by that CA"
        ),
        other => format!("the server's certificate was rejected: {other}"),
    }
}

/// `DnsName("db.example.com")` / `IpAddress(10.0.0.1)` (webpki's rendering) → `"db.example.com"`.
fn presented_name(name: &str) -> String {
    let inner = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(name);
    format!("\"{inner}\"")
}

/// The RFC 8446 name of a TLS alert.
fn alert_name(alert: AlertDescription) -> String {
    let name = match alert {
        AlertDescription::CloseNotify => "close_notify",
        AlertDescription::UnexpectedMessage => "unexpected_message",
        AlertDescription::BadRecordMac => "bad_record_mac",
        AlertDescription::HandshakeFailure => "handshake_failure",
        AlertDescription::BadCertificate => "bad_certificate",
        AlertDescription::UnsupportedCertificate => "unsupported_certificate",
        AlertDescription::CertificateRevoked => "certificate_revoked",
        AlertDescription::CertificateExpired => "certificate_expired",
        AlertDescription::CertificateUnknown => "certificate_unknown",
        AlertDescription::IllegalParameter => "illegal_parameter",
        AlertDescription::UnknownCA => "unknown_ca",
        AlertDescription::AccessDenied => "access_denied",
        AlertDescription::DecodeError => "decode_error",
        AlertDescription::DecryptError => "decrypt_error",
        AlertDescription::ProtocolVersion => "protocol_version",
        AlertDescription::InsufficientSecurity => "insufficient_security",
        AlertDescription::InternalError => "internal_error",
        AlertDescription::UnrecognisedName => "unrecognized_name",
        AlertDescription::CertificateRequired => "certificate_required",
        AlertDescription::NoApplicationProtocol => "no_application_protocol",
        other => return format!("number {}", u8::from(other)),
    };
    name.to_string()
}

/// A readable UTC time, e.g. `2024-05-01 12:00:00 UTC`.
fn utc(time: UnixTime) -> String {
    let secs = time.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An I/O error's text without Rust's ` (os error N)` suffix.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => one_line(&text),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `host:port[,host:port…]` of a config, for messages.
fn target_label(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut names: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if names.is_empty() {
        names = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if name.contains(':') && !name.starts_with('/') {
                format!("[{name}]:{}", port(i))
            } else {
                format!("{name}:{}", port(i))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether every host is a Unix socket (libpq never uses TLS there).
fn only_unix_sockets(config: &tokio_postgres::Config) -> bool {
    #[cfg(unix)]
    {
        let hosts = config.get_hosts();
        !hosts.is_empty()
            && config.get_hostaddrs().is_empty()
            && hosts.iter().all(|h| matches!(h, Host::Unix(_)))
    }
    #[cfg(not(unix))]
    {
        let _ = config;
        false
    }
}

/// `sslmode=require` without a root certificate: any server certificate is accepted, as in
/// libpq, but the handshake signatures are still checked (with the crypto provider's
/// algorithms), so the session key is bound to the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: webpki's full verification, except that a certificate not naming the host
/// is accepted. webpki checks the chain (and validity dates) before the name, so a name
/// error means everything else passed.
#[derive(Debug)]
struct VerifyChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for VerifyChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres-rustls's connector, noting whether tokio-postgres started a handshake,
/// i.e. whether the server agreed to TLS. That tells "the server refused TLS" apart from
/// other failures without parsing messages, and drives `prefer`'s plain retry.
#[derive(Clone)]
struct TrackedTls {
    inner: MakeRustlsConnect,
    started: Arc<AtomicBool>,
}

impl<S> MakeTlsConnect<S> for TrackedTls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = TrackedConnect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let inner = MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, domain)?;
        Ok(TrackedConnect {
            inner,
            started: self.started.clone(),
        })
    }
}

/// One connection's half of [`TrackedTls`].
struct TrackedConnect<T> {
    inner: T,
    started: Arc<AtomicBool>,
}

impl<S, T: TlsConnect<S>> TlsConnect<S> for TrackedConnect<T> {
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = T::Future;

    fn connect(self, stream: S) -> Self::Future {
        self.started.store(true, Ordering::SeqCst);
        self.inner.connect(stream)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn parse(params: &[(&str, &str)]) -> Result<TlsSettings, TlsError> {
        TlsSettings::from_params(params.iter().copied(), no_env, |_| false)
    }

    fn err(r: Result<TlsSettings, TlsError>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn default_is_prefer_without_verification() {
        let s = parse(&[]).unwrap();
        assert_eq!(s, TlsSettings::prefer());
        assert_eq!(s.verification(), Verification::None);
        assert_eq!(s.describe(), "prefer (certificate not verified)");
    }

    #[test]
    fn every_mode_parses() {
        let root = [("sslrootcert", "/ca.crt")];
        for (value, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let s = parse(&[("sslmode", value), root[0]]).unwrap();
            assert_eq!(s.mode(), mode);
            assert_eq!(mode.as_str(), value);
        }
        assert_eq!(
            parse(&[("sslmode", "require")]).unwrap().verification(),
            Verification::None
        );
        assert_eq!(
            parse(&[("sslmode", "verify-ca"), root[0]])
                .unwrap()
                .verification(),
            Verification::Chain
        );
        assert_eq!(
            parse(&[("sslmode", "verify-full"), root[0]])
                .unwrap()
                .verification(),
            Verification::ChainAndName
        );
    }

    #[test]
    fn unknown_mode_names_parameter_and_values() {
        assert_eq!(
            err(parse(&[("sslmode", "verify_full")])),
            "invalid sslmode \"verify_full\" in the connection URL: valid values are disable, allow, prefer, require, verify-ca, verify-full"
        );
        let e = TlsSettings::from_params(
            Vec::<(String, String)>::new(),
            env_of(&[("PGSSLMODE", "on")]),
            |_| false,
        );
        assert_eq!(
            err(e),
            "invalid sslmode \"on\" in environment variable PGSSLMODE: valid values are disable, allow, prefer, require, verify-ca, verify-full"
        );
    }

    #[test]
    fn environment_is_the_fallback_and_the_url_wins() {
        let env = env_of(&[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/env/ca.crt"),
            ("PGSSLCERT", "/env/c.crt"),
            ("PGSSLKEY", "/env/c.key"),
        ]);
        let s = TlsSettings::from_params(Vec::<(&str, &str)>::new(), &env, |_| false).unwrap();
        assert_eq!(s.mode(), SslMode::VerifyFull);
        assert_eq!(s.root(), &RootCerts::File("/env/ca.crt".into()));
        assert_eq!(
            s.client_cert(),
            Some((Path::new("/env/c.crt"), Path::new("/env/c.key")))
        );
        assert_eq!(
            s.describe(),
            "verify-full, root /env/ca.crt, client cert /env/c.crt"
        );
        let s = TlsSettings::from_params(
            [("sslmode", "require"), ("sslrootcert", "/url/ca.crt")],
            &env,
            |_| false,
        )
        .unwrap();
        assert_eq!(s.mode(), SslMode::Require);
        assert_eq!(s.root(), &RootCerts::File("/url/ca.crt".into()));
        // The last occurrence of a parameter wins, as in libpq.
        let s = parse(&[("sslmode", "disable"), ("sslmode", "allow")]).unwrap();
        assert_eq!(s.mode(), SslMode::Allow);
    }

    #[test]
    fn require_with_root_certificate_verifies_the_chain() {
        let s = parse(&[("sslmode", "require"), ("sslrootcert", "/ca.crt")]).unwrap();
        assert_eq!(s.verification(), Verification::Chain);
        assert_eq!(
            s.describe(),
            "verify-ca (sslmode=require with a root certificate), root /ca.crt"
        );
        let s = parse(&[("sslrootcert", "/ca.crt")]).unwrap();
        assert_eq!(s.mode(), SslMode::Prefer);
        assert_eq!(s.verification(), Verification::Chain);
    }

    #[test]
    fn default_files_are_used_only_when_they_exist() {
        let env = env_of(&[("HOME", "/home/u")]);
        let s = TlsSettings::from_params([("sslmode", "require")], &env, |_| false).unwrap();
        assert_eq!(s.root(), &RootCerts::None);
        assert_eq!(s.client_cert(), None);
        assert_eq!(s.verification(), Verification::None);

        let s = TlsSettings::from_params([("sslmode", "require")], &env, |_| true).unwrap();
        assert_eq!(
            s.root(),
            &RootCerts::File("/home/u/.postgresql/root.crt".into())
        );
        assert_eq!(s.verification(), Verification::Chain);
        assert_eq!(
            s.client_cert(),
            Some((
                Path::new("/home/u/.postgresql/postgresql.crt"),
                Path::new("/home/u/.postgresql/postgresql.key")
            ))
        );
        // A certificate without its key is an error, as in libpq.
        let e = TlsSettings::from_params([("sslmode", "require")], &env, |p| {
            !p.ends_with("postgresql.key")
        });
        assert_eq!(
            err(e),
            "client certificate /home/u/.postgresql/postgresql.crt is given but no private key: give it with sslkey=/path/to/client.key (or PGSSLKEY); /home/u/.postgresql/postgresql.key does not exist"
        );
        // disable ignores every certificate setting.
        let s = TlsSettings::from_params([("sslmode", "disable")], &env, |_| true).unwrap();
        assert_eq!(s.client_cert(), None);
        assert_eq!(s.describe(), "disable (no TLS)");
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        let env = env_of(&[("HOME", "/home/u")]);
        let e = TlsSettings::from_params([("sslmode", "verify-full")], &env, |_| false);
        assert_eq!(
            err(e),
            "sslmode=verify-full needs the CA certificate that signed the server's certificate, but no sslrootcert is given and /home/u/.postgresql/root.crt does not exist: give the CA's PEM file with sslrootcert=/path/to/ca.crt in the URL (or PGSSLROOTCERT), use sslrootcert=system to trust the system's CAs, or use sslmode=require to skip verification"
        );
        let e = parse(&[("sslmode", "verify-ca")]);
        assert!(err(e).contains("HOME is not set"));
        let s = TlsSettings::from_params([("sslmode", "verify-ca")], &env, |_| true).unwrap();
        assert_eq!(s.verification(), Verification::Chain);
    }

    #[test]
    fn system_roots_follow_libpq_16() {
        let s = parse(&[("sslrootcert", "system")]).unwrap();
        assert_eq!(s.mode(), SslMode::VerifyFull);
        assert_eq!(s.root(), &RootCerts::System);
        assert_eq!(s.describe(), "verify-full, root the system trust store");
        assert!(parse(&[("sslrootcert", "system"), ("sslmode", "verify-full")]).is_ok());
        for weak in ["disable", "allow", "prefer", "require", "verify-ca"] {
            assert_eq!(
                err(parse(&[("sslrootcert", "system"), ("sslmode", weak)])),
                format!("weak sslmode \"{weak}\" may not be used with sslrootcert=system (use \"verify-full\")")
            );
        }
        let s = TlsSettings::from_params(
            Vec::<(&str, &str)>::new(),
            env_of(&[("PGSSLROOTCERT", "system")]),
            |_| false,
        )
        .unwrap();
        assert_eq!(s.mode(), SslMode::VerifyFull);
    }

    #[test]
    fn other_parameters() {
        let s = parse(&[("sslsni", "0"), ("ssl_min_protocol_version", "TLSv1.3")]).unwrap();
        assert_eq!(
            s.describe(),
            "prefer (certificate not verified), TLS 1.3 only, no SNI"
        );
        assert!(err(parse(&[("ssl_max_protocol_version", "TLSv1.1")])).contains("only TLSv1.2"));
        assert!(err(parse(&[("ssl_min_protocol_version", "tls13")]))
            .starts_with("invalid ssl_min_protocol_version \"tls13\""));
        assert!(err(parse(&[("sslcrl", "/crl.pem")]))
            .starts_with("sslcrl is set (in the connection URL) but pgvault does not support it"));
        let s = parse(&[
            ("sslcert", "/c.crt"),
            ("sslkey", "/c.key"),
            ("sslcertmode", "disable"),
        ])
        .unwrap();
        assert_eq!(s.client_cert(), None);
        assert!(parse(&[("sslcompression", "1")]).is_ok());
    }

    #[test]
    fn split_url_removes_tls_parameters_and_keeps_the_rest_verbatim() {
        let url = url::Url::parse(
            "postgres://u@db.example.com:6432/app?sslmode=verify-full&options=-c%20search_path%3Dx+y&sslrootcert=%2Ftmp%2Fca%20dir%2Fca.crt&application_name=a",
        )
        .unwrap();
        let (stripped, s) = split_url(&url, no_env).unwrap();
        assert_eq!(
            stripped.as_str(),
            "postgres://u@db.example.com:6432/app?options=-c%20search_path%3Dx+y&application_name=a"
        );
        assert_eq!(s.mode(), SslMode::VerifyFull);
        assert_eq!(s.root(), &RootCerts::File("/tmp/ca dir/ca.crt".into()));
        let url = url::Url::parse("postgres://h/db?sslmode=disable").unwrap();
        let (stripped, _) = split_url(&url, no_env).unwrap();
        assert_eq!(stripped.as_str(), "postgres://h/db");
        use std::str::FromStr;
        assert!(tokio_postgres::Config::from_str(stripped.as_str()).is_ok());
    }

    #[test]
    fn files_are_read_with_clear_errors() {
        let s = parse(&[
            ("sslmode", "verify-full"),
            ("sslrootcert", "/nonexistent/ca.crt"),
        ])
        .unwrap();
        assert_eq!(
            s.connector().unwrap_err().to_string(),
            "cannot read sslrootcert /nonexistent/ca.crt: No such file or directory"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let s = parse(&[
            ("sslmode", "verify-ca"),
            ("sslrootcert", empty.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(
            s.connector().unwrap_err().to_string(),
            format!(
                "sslrootcert {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                empty.display()
            )
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join("k.key");
            std::fs::write(&key, "x").unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = read_key(&key).unwrap_err().to_string();
            assert!(e.contains("has group or world access (mode 644)"), "{e}");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = read_key(&key).unwrap_err().to_string();
            assert!(e.contains("holds no private key"), "{e}");
        }
        // disable needs no files at all.
        assert!(
            parse(&[("sslmode", "disable"), ("sslrootcert", "/nonexistent")])
                .unwrap()
                .connector()
                .is_ok()
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::ZERO)),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                1_700_000_000
            ))),
            "2023-11-14 22:13:20 UTC"
        );
        assert_eq!(
            utc(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                951_782_400
            ))),
            "2000-02-29 00:00:00 UTC"
        );
        assert_eq!(presented_name("DnsName(\"a.example\")"), "\"a.example\"");
        assert_eq!(presented_name("IpAddress(10.0.0.1)"), "\"10.0.0.1\"");
        assert_eq!(percent_decode("a%2Fb+c%zz"), "a/b+c%zz");
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_text(&e), "No such file or directory");
        let c: tokio_postgres::Config = "postgres://u@db:6432,[::1]:5433/x".parse().unwrap();
        assert_eq!(target_label(&c), "db:6432,[::1]:5433");
    }
}
