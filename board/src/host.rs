//! The host side of an update: key generation and manifest signing (the `glint-flash`
//! tool and tests use these; the device only verifies).

use crate::manifest::{HASH_LEN, MODEL_ID_LEN, ManifestHeader};
use ed25519_dalek::{Signer, SigningKey};
use glint_format::{FormatError, GlintFile};
use sha2::{Digest, Sha256};
use std::vec::Vec;

/// A new signing key from the operating system's randomness. The device holds its
/// [`verifying_key`](SigningKey::verifying_key).
pub fn generate_signing_key() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Why an image cannot be signed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SignError {
    /// The image is not a valid `.glint` model.
    #[error("not a .glint model: {0}")]
    Model(#[from] FormatError),
    /// The model id is longer than 32 bytes or has a NUL.
    #[error("model id must be at most {MODEL_ID_LEN} bytes, without NUL")]
    ModelId,
    /// Chunk size 0.
    #[error("chunk size must not be 0")]
    ChunkSize,
    /// The image is 4 GiB or more.
    #[error("image too large for a manifest")]
    TooLarge,
}

/// What the host says about an image it signs.
#[derive(Clone, Copy, Debug)]
pub struct ManifestSpec<'a> {
    /// The model's name (at most 32 bytes).
    pub model_id: &'a str,
    /// The model's version.
    pub model_version: u32,
    /// Bytes per chunk: a multiple of the device flash's erase size.
    pub chunk_size: u32,
}

impl ManifestSpec<'_> {
    /// The signed manifest of `image`, which must parse as a `.glint` model.
    pub fn sign(&self, image: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
        let format_version = GlintFile::parse(image)?.version().0;
        let id = self.model_id.as_bytes();
        if id.len() > MODEL_ID_LEN || id.contains(&0) {
            return Err(SignError::ModelId);
        }
        if self.chunk_size == 0 {
            return Err(SignError::ChunkSize);
        }
        let image_len = u32::try_from(image.len()).map_err(|_| SignError::TooLarge)?;
        let chunks: Vec<[u8; HASH_LEN]> = image
            .chunks(self.chunk_size as usize)
            .map(|c| Sha256::digest(c).into())
            .collect();
        let mut model_id = [0u8; MODEL_ID_LEN];
        for (dst, &b) in model_id.iter_mut().zip(id) {
            *dst = b;
        }
        let header = ManifestHeader {
            format_version,
            model_version: self.model_version,
            image_len,
            chunk_size: self.chunk_size,
            chunk_count: image_len.div_ceil(self.chunk_size),
            model_id,
            image_sha256: Sha256::digest(image).into(),
            chunk_table_sha256: [0; HASH_LEN],
        };
        Ok(signed_manifest(header, &chunks, key))
    }
}

/// Assembles and signs a manifest from a header and chunk hashes as given (the header's
/// chunk table hash is filled in). [`ManifestSpec::sign`] is the usual way; this one
/// also makes manifests that lie, for tests.
pub fn signed_manifest(
    mut header: ManifestHeader,
    chunk_sha256: &[[u8; HASH_LEN]],
    key: &SigningKey,
) -> Vec<u8> {
    let table = chunk_sha256.concat();
    header.chunk_table_sha256 = Sha256::digest(&table).into();
    let header = header.to_bytes();
    let signature = key.sign(&header).to_bytes();
    [&header[..], &signature, &table].concat()
}
