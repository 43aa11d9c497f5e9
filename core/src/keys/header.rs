//! The age header at the start of every encrypted object, read and rewritten on its own.
//!
//! An age file is a text header (one stanza per recipient, each wrapping the same random
//! file key, closed by a MAC line) followed by the payload, which is encrypted with a key
//! derived from the file key and a nonce stored after the header. Who can decrypt an
//! object is decided by the header alone, so `pgvault keys rotate` changes it by writing a
//! new header for the same file key and keeping every payload byte as stored: a few hundred
//! bytes per object instead of the whole repository.
//!
//! The `age` crate does not expose its header, so this module parses and writes it with
//! the stanza codec of `age-core` and computes the header MAC as the age specification
//! defines it: HMAC-SHA-256 keyed with `HKDF-SHA-256(ikm = file key, salt = empty,
//! info = "header")` over the header up to and including the `---` of the MAC line.

use age::Identity as _;
use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Identities, Recipients};
use crate::error::{Error, Result};

/// The first line of every age v1 header.
const INTRO: &[u8] = b"age-encryption.org/v1\n";
/// What starts the MAC line.
const MAC_TAG: &[u8] = b"\n---";
/// Length of the base64 (unpadded) MAC.
const ENCODED_MAC_LEN: usize = 43;
/// Headers pgvault writes are a few hundred bytes; a reader looks this far for the end.
pub const HEADER_SEARCH_LIMIT: u64 = 64 * 1024;

/// Where the age header at the start of `bytes` ends (the offset of the first payload
/// byte), or `None` when `bytes` does not hold a whole header (yet).
///
/// Stanza lines start with `->` and body lines are base64, which has no `-`: the first
/// `\n---` after the intro line is the MAC line.
pub fn header_len(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(INTRO) {
        return None;
    }
    let tag = bytes
        .windows(MAC_TAG.len())
        .position(|w| w == MAC_TAG)
        .filter(|&at| at + 1 >= INTRO.len())?;
    // "\n--- " + 43 base64 characters + "\n"
    let end = tag + MAC_TAG.len() + 1 + ENCODED_MAC_LEN + 1;
    (bytes.len() >= end && bytes[end - 1] == b'\n').then_some(end)
}

/// A parsed age header: its bytes as stored and its stanzas.
#[derive(Debug)]
pub struct AgeHeader {
    bytes: Vec<u8>,
    stanzas: Vec<Stanza>,
    mac: Vec<u8>,
}

impl AgeHeader {
    /// Parse the header at the start of `prefix` (the first bytes of an object).
    pub fn parse(object: &str, prefix: &[u8]) -> Result<AgeHeader> {
        let corrupt = |message: &str| Error::Decrypt {
            object: object.into(),
            message: format!("the age header is unreadable: {message}"),
        };
        let len = header_len(prefix).ok_or_else(|| {
            corrupt(&format!(
                "no age v1 header ends within the first {} bytes",
                prefix.len()
            ))
        })?;
        let bytes = &prefix[..len];
        // Stanzas run from after the intro to the MAC line's "---".
        let mac_line = len - (ENCODED_MAC_LEN + 1) - 4;
        let mut rest = &bytes[INTRO.len()..mac_line];
        let mut stanzas = Vec::new();
        while !rest.is_empty() {
            let (after, stanza) = age_core::format::read::age_stanza(rest)
                .map_err(|_| corrupt("a recipient stanza does not parse"))?;
            stanzas.push(Stanza::from(stanza));
            rest = after;
        }
        let encoded = &bytes[len - 1 - ENCODED_MAC_LEN..len - 1];
        let mac = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded)
            .map_err(|_| corrupt("the MAC is not base64"))?;
        Ok(AgeHeader {
            bytes: bytes.to_vec(),
            stanzas,
            mac,
        })
    }

    /// The header as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its length: the offset of the payload in the object.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Always false: a header has at least its intro line (clippy asks for the pair).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// SHA-256 of the header bytes, hex.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }

    /// The bytes the MAC covers: everything up to and including `---`.
    fn mac_input(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - (ENCODED_MAC_LEN + 2)]
    }

    /// The file key, unwrapped with one of `identities` and checked against the MAC.
    /// `Ok(None)`: none of the identities is a recipient of this header.
    pub fn open(&self, object: &str, identities: &Identities) -> Result<Option<FileKey>> {
        for identity in identities.as_x25519() {
            match identity.unwrap_stanzas(&self.stanzas) {
                None => continue,
                Some(Err(e)) => {
                    return Err(Error::Decrypt {
                        object: object.into(),
                        message: format!("the age header does not open: {e}"),
                    })
                }
                Some(Ok(file_key)) => {
                    let mut mac = header_mac(&file_key);
                    mac.update(self.mac_input());
                    if mac.verify_slice(&self.mac).is_err() {
                        return Err(Error::Decrypt {
                            object: object.into(),
                            message: "the age header's MAC does not match: the header was altered"
                                .into(),
                        });
                    }
                    return Ok(Some(file_key));
                }
            }
        }
        Ok(None)
    }
}

/// The HMAC that authenticates a header, keyed from the file key.
fn header_mac(file_key: &FileKey) -> Hmac<Sha256> {
    let key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
    // HMAC accepts keys of any length: this cannot fail for a 32-byte key.
    <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!())
}

/// A new header wrapping `file_key` to `recipients` (one X25519 stanza each, in policy
/// order, plus a random grease stanza as the `age` crate writes), with its MAC. The
/// payload that follows the old header stays valid behind it.
pub fn wrap(file_key: &FileKey, recipients: &Recipients) -> Result<Vec<u8>> {
    let mut stanzas = Vec::new();
    for recipient in recipients.x25519() {
        let (wrapped, _labels) = age::Recipient::wrap_file_key(recipient, file_key)
            .map_err(|e| Error::Invalid(format!("cannot wrap the file key: {e}")))?;
        stanzas.extend(wrapped);
    }
    stanzas.push(age_core::format::grease_the_joint());
    let mut out = INTRO.to_vec();
    for stanza in &stanzas {
        out = cookie_factory::gen_simple(
            age_core::format::write::age_stanza(&stanza.tag, &stanza.args, &stanza.body),
            out,
        )
        .map_err(|e| Error::Internal(format!("cannot write an age stanza: {e}")))?;
    }
    out.extend_from_slice(b"---");
    let mut mac = header_mac(file_key);
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.push(b' ');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(tag)
            .as_bytes(),
    );
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn encrypt(recipients: &Recipients, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = recipients
            .encryptor()
            .unwrap()
            .wrap_output(&mut out)
            .unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    fn decrypt(identities: &Identities, stored: &[u8]) -> Option<Vec<u8>> {
        let d = age::Decryptor::new(stored).ok()?;
        let mut r = d.decrypt(identities.as_dyn()).ok()?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).ok()?;
        Some(out)
    }

    #[test]
    fn a_rewrapped_header_opens_with_the_new_key_only_and_keeps_the_payload() {
        let dir = tempfile::tempdir().unwrap();
        let (id_a, r_a) = crate::keys::test_key_pair(dir.path(), "a");
        let (id_b, r_b) = crate::keys::test_key_pair(dir.path(), "b");
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let stored = encrypt(&r_a, &plain);
        let header = AgeHeader::parse("obj", &stored[..4096.min(stored.len())]).unwrap();
        assert_eq!(header_len(&stored), Some(header.len() as usize));
        assert!(header.open("obj", &id_b).unwrap().is_none());
        let file_key = header.open("obj", &id_a).unwrap().unwrap();
        let new_header = wrap(&file_key, &r_b).unwrap();
        let mut rotated = new_header.clone();
        rotated.extend_from_slice(&stored[header.len() as usize..]);
        assert_eq!(decrypt(&id_b, &rotated).as_deref(), Some(&plain[..]));
        assert_eq!(decrypt(&id_a, &rotated), None);
        // The rewritten header parses again and its MAC holds.
        let again = AgeHeader::parse("obj", &rotated).unwrap();
        assert_eq!(again.bytes(), &new_header[..]);
        assert!(again.open("obj", &id_b).unwrap().is_some());
    }

    #[test]
    fn an_altered_header_is_refused_by_its_mac() {
        let dir = tempfile::tempdir().unwrap();
        let (id_a, r_a) = crate::keys::test_key_pair(dir.path(), "a");
        let (_, r_b) = crate::keys::test_key_pair(dir.path(), "b");
        let stored = encrypt(&r_a, b"hello");
        let header = AgeHeader::parse("obj", &stored).unwrap();
        let file_key = header.open("obj", &id_a).unwrap().unwrap();
        // Splice B's stanza into A's header without recomputing the MAC.
        let b_header = wrap(&file_key, &r_b).unwrap();
        let b_first_stanza_end = b_header[INTRO.len()..]
            .windows(2)
            .position(|w| w == b"\n-")
            .unwrap()
            + INTRO.len()
            + 1;
        let mut forged = header.bytes()[..INTRO.len()].to_vec();
        forged.extend_from_slice(&b_header[INTRO.len()..b_first_stanza_end]);
        forged.extend_from_slice(&header.bytes()[INTRO.len()..]);
        let forged = AgeHeader::parse("obj", &forged).unwrap();
        let Err(err) = forged.open("obj", &id_a) else {
            panic!("a forged header opened")
        };
        let err = err.to_string();
        assert!(err.contains("MAC does not match"), "{err}");
    }

    #[test]
    fn header_len_needs_the_whole_mac_line() {
        let dir = tempfile::tempdir().unwrap();
        let (_, r_a) = crate::keys::test_key_pair(dir.path(), "a");
        let stored = encrypt(&r_a, b"x");
        let len = header_len(&stored).unwrap();
        assert_eq!(header_len(&stored[..len - 1]), None);
        assert_eq!(header_len(&stored[..len]), Some(len));
        assert_eq!(header_len(b"not age"), None);
    }
}
