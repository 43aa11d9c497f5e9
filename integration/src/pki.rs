//! Throwaway certificates for TLS tests, generated with rcgen: a CA, a server certificate
//! signed by it for `localhost` and `127.0.0.1`, a client certificate for the role
//! `certuser`, and an unrelated CA that signed nothing the server presents.
//!
//! The server certificate is a leaf signed by the CA, not the CA itself: rustls (and so
//! pgvault) refuses a self-signed `CA:TRUE` certificate used directly as a server
//! certificate, even when it is the trusted root.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The common name of the client certificate, and so the role it logs in as with
/// `cert` authentication.
pub const CLIENT_USER: &str = "certuser";

/// The files [`Pki::generate`] wrote, all PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that signed the server and client certificates (`ca.crt`).
    pub ca: PathBuf,
    /// The server certificate, for `localhost` and IP `127.0.0.1` (`server.crt`).
    pub server_cert: PathBuf,
    /// The server certificate's private key, mode 0600 (`server.key`).
    pub server_key: PathBuf,
    /// A second CA that signed nothing used here (`wrong-ca.crt`).
    pub wrong_ca: PathBuf,
    /// The client certificate, common name [`CLIENT_USER`], signed by the CA (`client.crt`).
    pub client_cert: PathBuf,
    /// The client certificate's private key, mode 0600 (`client.key`).
    pub client_key: PathBuf,
}

fn fail<T>(what: &str) -> impl FnOnce(rcgen::Error) -> T + '_ {
    move |e| panic!("cannot generate {what}: {e}")
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgvault tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A self-signed CA certificate (PEM) and the issuer that signs with its key.
fn new_ca(common_name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail("a CA"));
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap_or_else(fail("a CA key"));
    let cert = params.self_signed(&key).unwrap_or_else(fail("a CA"));
    (cert.pem(), Issuer::new(params, key))
}

/// A leaf certificate (PEM) and its private key (PKCS#8 PEM) signed by `issuer`.
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    alt_names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = alt_names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap_or_else(fail(common_name));
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap_or_else(fail(common_name));
    let cert = params
        .signed_by(&key, issuer)
        .unwrap_or_else(fail(common_name));
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str, mode: u32) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    // The mode given to open() applies only to a new file (and passes the umask).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

impl Pki {
    /// Generate every certificate and key into `dir` (which must exist): `ca.crt`,
    /// `server.crt`, `server.key`, `wrong-ca.crt`, `client.crt`, `client.key`. Keys are
    /// mode 0600, certificates 0644.
    pub fn generate(dir: &Path) -> Pki {
        let (ca_pem, ca) = new_ca("pgvault test CA");
        let (wrong_ca_pem, _) = new_ca("pgvault unrelated test CA");
        let (server_pem, server_key_pem) = new_leaf(
            &ca,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) =
            new_leaf(&ca, CLIENT_USER, &[], ExtendedKeyUsagePurpose::ClientAuth);
        let pki = Pki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            wrong_ca: dir.join("wrong-ca.crt"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        write(&pki.ca, &ca_pem, 0o644);
        write(&pki.wrong_ca, &wrong_ca_pem, 0o644);
        write(&pki.server_cert, &server_pem, 0o644);
        write(&pki.server_key, &server_key_pem, 0o600);
        write(&pki.client_cert, &client_pem, 0o644);
        write(&pki.client_key, &client_key_pem, 0o600);
        pki
    }
}
