//! age keys: the public recipients a policy encrypts to, and the private identities a
//! restore decrypts with.
//!
//! The agent only ever holds recipients, so it can write backups but never read them.
//! Manifests record a *fingerprint* of each recipient (not the key itself), enough to
//! tell an operator which key a backup needs without exposing anything useful.

pub mod header;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The fingerprint pgvault records for an age public key: `sha256:` and the first
/// 16 hex digits of the SHA-256 of its bech32 text.
pub fn fingerprint(public_key: &str) -> String {
    let digest = Sha256::digest(public_key.trim().as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..16])
}

/// The age recipients of a policy, with their fingerprints.
#[derive(Clone, Default)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.fingerprints()).finish()
    }
}

impl Recipients {
    /// Add a recipient from its `age1…` text; the error names the value.
    pub fn add(&mut self, value: &str) -> std::result::Result<(), String> {
        if value
            .trim()
            .to_ascii_uppercase()
            .starts_with("AGE-SECRET-KEY-")
        {
            return Err("this is an age secret key (an identity), not a recipient: never put it in a policy. Put its public key here (age1…, printed by `pgvault keygen` or `age-keygen -y`) and keep the identity file apart".into());
        }
        let key = age::x25519::Recipient::from_str(value.trim()).map_err(|e| {
            format!("{value:?} is not an age public key ({e}); expected \"age1…\" as printed by age-keygen")
        })?;
        self.keys.push(key);
        Ok(())
    }

    /// Number of recipients.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (a policy never validates in that state).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fingerprints of all recipients, in policy order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| fingerprint(&k.to_string()))
            .collect()
    }

    /// The recipients as `age1…` text, in policy order.
    pub fn keys_text(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_string()).collect()
    }

    /// The X25519 keys themselves, for rewrapping headers ([`header::wrap`]).
    pub(crate) fn x25519(&self) -> &[age::x25519::Recipient] {
        &self.keys
    }

    /// An age encryptor to all recipients.
    pub(crate) fn encryptor(&self) -> Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| Error::Invalid(format!("cannot encrypt to the policy's recipients: {e}")))
    }
}

/// Warn when an identity file can be read by other users: the key decrypts every backup.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "identity file {} is readable by group or others (mode {mode:04o}); it decrypts every backup: run chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
}

/// The private keys a restore or deep verification decrypts with, loaded from an age
/// identity file.
#[derive(Clone)]
pub struct Identities {
    path: PathBuf,
    identities: Vec<age::x25519::Identity>,
}

impl Identities {
    /// Load an age identity file (the format `age-keygen` writes).
    pub fn load(path: &Path) -> Result<Identities> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read identity file {}", path.display()), e))?;
        warn_if_exposed(path);
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = age::x25519::Identity::from_str(line).map_err(|_| Error::Identity {
                path: path.to_path_buf(),
                message: format!(
                    "line {} is not an age secret key (AGE-SECRET-KEY-1…); pass the file age-keygen wrote",
                    n + 1
                ),
            })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(Error::Identity {
                path: path.to_path_buf(),
                message: "contains no age secret key".into(),
            });
        }
        Ok(Identities {
            path: path.to_path_buf(),
            identities,
        })
    }

    /// The identity file path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fingerprints of the public keys matching these identities.
    pub fn fingerprints(&self) -> Vec<String> {
        self.identities
            .iter()
            .map(|i| fingerprint(&i.to_public().to_string()))
            .collect()
    }

    /// Whether any identity matches one of the given recipient fingerprints.
    pub fn matches_any(&self, recipients: &[String]) -> bool {
        self.fingerprints().iter().any(|f| recipients.contains(f))
    }

    /// The X25519 identities, for opening headers ([`header::AgeHeader::open`]).
    pub(crate) fn as_x25519(&self) -> &[age::x25519::Identity] {
        &self.identities
    }

    pub(crate) fn as_dyn(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.identities.iter().map(|i| i as &dyn age::Identity)
    }
}

/// Generate a new age key pair, write the identity to `path` (mode 0600, never
/// overwriting) and return the recipient to put in a policy.
pub fn generate_identity_file(path: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create identity file {}", path.display()), e))?;
    let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    writeln!(
        file,
        "# created by {}: {}\n# public key: {recipient}\n{secret}",
        crate::TOOL_VERSION,
        chrono::Utc::now().to_rfc3339()
    )
    .and_then(|_| file.sync_all())
    .map_err(|e| Error::io(format!("cannot write identity file {}", path.display()), e))?;
    Ok(recipient)
}

/// A fresh key pair for tests: the identity written to `dir/name`, and its recipient.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_key_pair(dir: &Path, name: &str) -> (Identities, Recipients) {
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        ),
    )
    .unwrap();
    let mut r = Recipients::default();
    r.add(&id.to_public().to_string()).unwrap();
    (Identities::load(&path).unwrap(), r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_short() {
        let fp = fingerprint("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p");
        assert_eq!(fp.len(), "sha256:".len() + 16);
        assert_eq!(
            fp,
            fingerprint(" age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n")
        );
    }

    #[test]
    fn identity_file_round_trip_matches_recipient() {
        let id = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(
            &path,
            format!(
                "# created: now\n{}\n",
                age::secrecy::ExposeSecret::expose_secret(&id.to_string())
            ),
        )
        .unwrap();
        let ids = Identities::load(&path).unwrap();
        let mut r = Recipients::default();
        r.add(&id.to_public().to_string()).unwrap();
        assert!(ids.matches_any(&r.fingerprints()));
    }

    #[test]
    fn garbage_identity_file_is_refused_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(&path, "hello\n").unwrap();
        let err = Identities::load(&path).err().unwrap().to_string();
        assert!(err.contains("line 1 is not an age secret key"), "{err}");
    }
}
