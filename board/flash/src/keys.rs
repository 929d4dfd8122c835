//! Key files: the host's Ed25519 signing key and the device's public key, each as 64
//! hex digits on one line.

use glint_board::ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::{Path, PathBuf};

/// The signing key's file name in a key directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// The public key's file name in a key directory (what the device holds).
pub const PUBLIC_KEY_FILE: &str = "device.pub";

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Not 64 hex digits, or not a valid public key.
    #[error("{0}: not a key (64 hex digits)")]
    Malformed(PathBuf),
    /// Key generation failed (the OS's randomness).
    #[error("no randomness for a key: {0}")]
    Random(String),
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_hex(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })?;
    let text = text.trim();
    let mut out = [0u8; 32];
    if text.len() != 64 || !text.is_ascii() {
        return Err(KeyError::Malformed(path.into()));
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| KeyError::Malformed(path.into()))?;
    }
    Ok(out)
}

fn write(path: &Path, text: String) -> Result<(), KeyError> {
    std::fs::write(path, text + "\n").map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })
}

/// Reads a signing key file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    read_hex(path).map(|seed| SigningKey::from_bytes(&seed))
}

/// Reads a public key file.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&read_hex(path)?).map_err(|_| KeyError::Malformed(path.into()))
}

/// Generates a key pair into `dir` ([`SIGNING_KEY_FILE`], [`PUBLIC_KEY_FILE`]),
/// creating it; returns the signing key.
pub fn generate_key_pair(dir: &Path) -> Result<SigningKey, KeyError> {
    let key =
        glint_board::host::generate_signing_key().map_err(|e| KeyError::Random(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.into(),
        source,
    })?;
    write(&dir.join(SIGNING_KEY_FILE), hex(&key.to_bytes()))?;
    write(
        &dir.join(PUBLIC_KEY_FILE),
        hex(&key.verifying_key().to_bytes()),
    )?;
    Ok(key)
}

/// The public key in `dir`, after generating a key pair there if it has none: what a
/// device is provisioned with.
pub fn provision(dir: &Path) -> Result<VerifyingKey, KeyError> {
    let public = dir.join(PUBLIC_KEY_FILE);
    if public.exists() {
        read_public_key(&public)
    } else {
        generate_key_pair(dir).map(|k| k.verifying_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_round_trip_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let public = provision(dir.path()).unwrap();
        let signing = read_signing_key(&dir.path().join(SIGNING_KEY_FILE)).unwrap();
        assert_eq!(signing.verifying_key(), public);
        assert_eq!(provision(dir.path()).unwrap(), public, "kept, not replaced");
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "zz".repeat(32)).unwrap();
        assert!(matches!(
            read_signing_key(&bad),
            Err(KeyError::Malformed(_))
        ));
    }
}
