//! The manifest of a model image: what the image is (model id and version, `.glint`
//! format version), its length, the SHA-256 of the whole image and of each chunk. The
//! host signs the fixed-size header with Ed25519; the header holds the SHA-256 of the
//! chunk table, so the signature covers everything.
//!
//! Layout (little-endian), as sent and as stored at the start of a slot:
//!
//! | bytes | what |
//! | --- | --- |
//! | 0..128 | header (below), signed |
//! | 128..192 | Ed25519 signature of the header |
//! | 192.. | chunk table: SHA-256 of each chunk, `chunk_count` x 32 bytes |
//!
//! Header: magic `GLMANIF1` (8), manifest version u16, `.glint` major version u16,
//! model version u32, image length u32, chunk size u32, chunk count u32, reserved u32
//! (0), model id (32, UTF-8, NUL-padded), image SHA-256 (32), chunk table SHA-256 (32).

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The first 8 bytes of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"GLMANIF1";
/// The manifest layout this crate reads and writes.
pub const MANIFEST_VERSION: u16 = 1;
/// Bytes of the signed header.
pub const HEADER_LEN: usize = 128;
/// Bytes of the Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of the header and signature: where the chunk table starts.
pub const SIGNED_LEN: usize = HEADER_LEN + SIGNATURE_LEN;
/// Bytes of one SHA-256.
pub const HASH_LEN: usize = 32;
/// Bytes of the model id field.
pub const MODEL_ID_LEN: usize = 32;

/// What can be wrong with a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ManifestError {
    /// Shorter than a header and signature.
    #[error("manifest truncated")]
    Truncated,
    /// The magic is not [`MANIFEST_MAGIC`].
    #[error("not a manifest (bad magic)")]
    BadMagic,
    /// A manifest version this device does not know.
    #[error("unsupported manifest version {0}")]
    UnsupportedVersion(u16),
    /// A header field is out of range or inconsistent.
    #[error("bad manifest field: {0}")]
    BadField(&'static str),
    /// The length disagrees with the chunk count.
    #[error("manifest is {actual} bytes, its chunk count says {expected}")]
    LengthMismatch {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The signature does not verify with the device's public key.
    #[error("manifest signature does not verify")]
    BadSignature,
    /// The chunk table does not hash to what the signed header says.
    #[error("chunk table does not match the signed header")]
    ChunkTableMismatch,
}

/// The signed header of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ManifestHeader {
    /// The major version of the `.glint` format the image is in.
    pub format_version: u16,
    /// The model's version, chosen by whoever packs it.
    pub model_version: u32,
    /// Image length in bytes.
    pub image_len: u32,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u32,
    /// Chunks in the image: `image_len` divided by `chunk_size`, rounded up.
    pub chunk_count: u32,
    /// The model's name, UTF-8, NUL-padded.
    pub model_id: [u8; MODEL_ID_LEN],
    /// SHA-256 of the whole image.
    pub image_sha256: [u8; HASH_LEN],
    /// SHA-256 of the chunk table.
    pub chunk_table_sha256: [u8; HASH_LEN],
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl ManifestHeader {
    /// Parses and checks a header (not its signature).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, ManifestError> {
        let u16_at = |at| u16::from_le_bytes(take(bytes, at));
        let u32_at = |at| u32::from_le_bytes(take(bytes, at));
        if take::<8>(bytes, 0) != MANIFEST_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if u16_at(8) != MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion(u16_at(8)));
        }
        let header = ManifestHeader {
            format_version: u16_at(10),
            model_version: u32_at(12),
            image_len: u32_at(16),
            chunk_size: u32_at(20),
            chunk_count: u32_at(24),
            model_id: take(bytes, 32),
            image_sha256: take(bytes, 64),
            chunk_table_sha256: take(bytes, 96),
        };
        let bad = |why| Err(ManifestError::BadField(why));
        if u32_at(28) != 0 {
            return bad("reserved field not zero");
        }
        if header.image_len == 0 || header.chunk_size == 0 {
            return bad("empty image or chunk");
        }
        if header.image_len.div_ceil(header.chunk_size) != header.chunk_count {
            return bad("chunk count disagrees with the lengths");
        }
        let id = &header.model_id;
        let id_len = id.iter().position(|&b| b == 0).unwrap_or(MODEL_ID_LEN);
        let (name, padding) = id.split_at(id_len);
        if core::str::from_utf8(name).is_err() || padding.iter().any(|&b| b != 0) {
            return bad("model id not NUL-padded UTF-8");
        }
        Ok(header)
    }

    /// The header's bytes, as signed.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        put(&mut out, 0, &MANIFEST_MAGIC);
        put(&mut out, 8, &MANIFEST_VERSION.to_le_bytes());
        put(&mut out, 10, &self.format_version.to_le_bytes());
        put(&mut out, 12, &self.model_version.to_le_bytes());
        put(&mut out, 16, &self.image_len.to_le_bytes());
        put(&mut out, 20, &self.chunk_size.to_le_bytes());
        put(&mut out, 24, &self.chunk_count.to_le_bytes());
        put(&mut out, 32, &self.model_id);
        put(&mut out, 64, &self.image_sha256);
        put(&mut out, 96, &self.chunk_table_sha256);
        out
    }

    /// The model id as text (checked UTF-8 by [`parse`](Self::parse)).
    pub fn model_id(&self) -> &str {
        let len = self
            .model_id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MODEL_ID_LEN);
        self.model_id
            .get(..len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Where chunk `index` starts in the image and how long it is; `None` past the end.
    pub fn chunk(&self, index: u32) -> Option<(u32, u32)> {
        if index >= self.chunk_count {
            return None;
        }
        let start = index.checked_mul(self.chunk_size)?;
        Some((
            start,
            self.chunk_size.min(self.image_len.checked_sub(start)?),
        ))
    }

    /// Bytes of the whole manifest: header, signature and chunk table.
    pub fn manifest_len(&self) -> Option<usize> {
        (self.chunk_count as usize)
            .checked_mul(HASH_LEN)?
            .checked_add(SIGNED_LEN)
    }

    /// Checks `signature` over this header's bytes with `key`.
    pub fn verify_signature(
        &self,
        signature: &[u8; SIGNATURE_LEN],
        key: &VerifyingKey,
    ) -> Result<(), ManifestError> {
        key.verify_strict(&self.to_bytes(), &Signature::from_bytes(signature))
            .map_err(|_| ManifestError::BadSignature)
    }
}

/// A manifest whose signature and chunk table have been checked.
#[derive(Clone, Copy, Debug)]
pub struct Manifest<'a> {
    header: ManifestHeader,
    bytes: &'a [u8],
}

impl<'a> Manifest<'a> {
    /// Parses `bytes` and checks them against the device's public `key`: the header's
    /// signature, then that the chunk table hashes to what the header says.
    pub fn parse(bytes: &'a [u8], key: &VerifyingKey) -> Result<Self, ManifestError> {
        let head = bytes.get(..HEADER_LEN).ok_or(ManifestError::Truncated)?;
        let signature = bytes
            .get(HEADER_LEN..SIGNED_LEN)
            .ok_or(ManifestError::Truncated)?;
        let header = ManifestHeader::parse(&take(head, 0))?;
        let expected = header
            .manifest_len()
            .ok_or(ManifestError::BadField("chunk count"))?;
        if bytes.len() != expected {
            return Err(ManifestError::LengthMismatch {
                expected,
                actual: bytes.len(),
            });
        }
        if header.to_bytes() != head {
            return Err(ManifestError::BadField("non-canonical header"));
        }
        header.verify_signature(&take(signature, 0), key)?;
        let table = bytes.get(SIGNED_LEN..).unwrap_or_default();
        if <[u8; HASH_LEN]>::from(Sha256::digest(table)) != header.chunk_table_sha256 {
            return Err(ManifestError::ChunkTableMismatch);
        }
        Ok(Manifest { header, bytes })
    }

    /// The signed header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// The manifest's bytes, as stored in the slot.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The SHA-256 of chunk `index`.
    pub fn chunk_sha256(&self, index: u32) -> Option<[u8; HASH_LEN]> {
        let at = SIGNED_LEN.checked_add((index as usize).checked_mul(HASH_LEN)?)?;
        self.bytes
            .get(at..at.checked_add(HASH_LEN)?)?
            .try_into()
            .ok()
    }
}
