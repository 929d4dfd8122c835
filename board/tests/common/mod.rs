//! What the board's tests share: tiny `.glint` images, their signed manifests, and a
//! device with a small flash.
#![allow(dead_code)] // Each test file uses part of it.

use glint_board::ed25519_dalek::SigningKey;
use glint_board::host::ManifestSpec;
use glint_board::*;
use glint_format::quant::quantize;
use glint_format::*;

/// Write unit and erase sector of the test flash.
pub const WRITE: usize = 4;
pub const ERASE: usize = 1024;
/// Two sectors a chunk, so a chunk's erase is two operations.
pub const CHUNK: u32 = 2048;
pub type Flash = MemFlash<WRITE, ERASE>;

pub const MANIFEST_AREA: u32 = 2 * ERASE as u32;
pub const SLOT_LEN: u32 = 40 * ERASE as u32;
pub const SECTORS: usize = 2 + 2 * 40;

pub fn table() -> PartitionTable {
    PartitionTable::sequential(ERASE as u32, MANIFEST_AREA, SLOT_LEN)
}

/// The host's key; the device holds its public half.
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub fn updater(flash: Flash) -> Result<Updater<Flash>, UpdateError> {
    Updater::new(flash, table(), signing_key().verifying_key())
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        dim: 64,
        n_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_dim: 64,
        vocab_size: 260,
        context_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        rope_style: RopeStyle::Interleaved,
        rope_scaling: None,
        tied_embeddings: true,
        qkv_bias: false,
        bos: Some(256),
        eos: Some(257),
        pad: None,
        eot: Some(257),
        sampling: None,
    }
}

/// A tiny valid model; `version` changes its weights and provenance.
pub fn tiny_image(version: u32) -> Vec<u8> {
    let config = tiny_config();
    let mut tokens: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.extend(["<s>", "</s>", "zz", "ab"].map(String::from));
    let meta = FileMeta {
        config,
        tokenizer: TokenizerSpec {
            model: TokenizerModel::ByteLevelBpe,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
            pre: "smollm".into(),
            token_types: (0..tokens.len())
                .map(|i| if i == 256 || i == 257 { 3 } else { 1 })
                .collect(),
            tokens,
            scores: None,
            merges: vec!["a b".into()],
        },
        chat_template: "{{ messages }}".into(),
        provenance: vec![("model_version".into(), version.to_string())],
    };
    let tensors: Vec<TensorOut> = expected_llama_tensors(&config)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: u64 = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|j| ((j as f32 + i as f32) * 0.37 + version as f32).sin())
                .collect();
            let dtype = if shape.len() == 1 {
                DType::F32
            } else {
                DType::Q4G32A
            };
            TensorOut {
                name,
                dtype,
                shape,
                bytes: quantize(dtype, &data),
            }
        })
        .collect();
    let mut out = Vec::new();
    write_glint(&mut out, &meta, &tensors).unwrap();
    out
}

pub fn spec(version: u32) -> ManifestSpec<'static> {
    ManifestSpec {
        model_id: "tiny-llama",
        model_version: version,
        chunk_size: CHUNK,
    }
}

/// The signed manifest of `tiny_image(version)`.
pub fn manifest(version: u32) -> Vec<u8> {
    spec(version)
        .sign(&tiny_image(version), &signing_key())
        .unwrap()
}

/// Sends every chunk from where the device says to resume, then finishes.
pub fn transfer(
    updater: &mut Updater<Flash>,
    manifest: &[u8],
    image: &[u8],
) -> Result<SlotId, UpdateError> {
    let progress = updater.begin(manifest)?;
    for index in progress.next_chunk..progress.chunk_count {
        updater.write_chunk(index, chunk(image, index))?;
    }
    updater.finish()
}

pub fn chunk(image: &[u8], index: u32) -> &[u8] {
    let start = (index * CHUNK) as usize;
    &image[start..(start + CHUNK as usize).min(image.len())]
}

/// Installs `version` through the whole update path (transfer, trial boot, confirm)
/// on a device that has no trial pending.
pub fn install(flash: Flash, version: u32) -> Flash {
    let mut u = updater(flash).unwrap();
    let slot = transfer(&mut u, &manifest(version), &tiny_image(version)).unwrap();
    let mut u = updater(u.release()).unwrap();
    let booted = u.boot().unwrap();
    assert_eq!((booted.slot, booted.state), (slot, SlotState::Trial));
    assert_eq!(booted.manifest.model_version, version);
    u.confirm().unwrap();
    assert_eq!(u.state().slot(slot), SlotState::Confirmed);
    u.release()
}

/// A device with model version 1 confirmed in slot A and slot B empty, as the factory
/// leaves it (installed through the update path on a blank flash).
pub fn provisioned() -> Flash {
    let mut u = updater(Flash::new(SECTORS)).unwrap();
    assert_eq!(u.boot(), Err(UpdateError::NoBootableSlot));
    let flash = install(u.release(), 1);
    let u = updater(flash).unwrap();
    assert_eq!(u.state().slots, [SlotState::Confirmed, SlotState::Invalid]);
    u.release()
}

/// A device whose slot A holds version 3 as the fallback and slot B version 1,
/// confirmed: the next update overwrites slot A, which it first marks invalid.
pub fn with_fallback() -> Flash {
    let flash = install(install(Flash::new(SECTORS), 3), 1);
    let u = updater(flash).unwrap();
    assert_eq!(u.state().slots, [SlotState::Fallback, SlotState::Confirmed]);
    u.release()
}

/// Checks that the booted slot holds a whole valid model: version 1's or version 2's
/// exact bytes, parsing and verifying with `glint_format`. Returns the version.
pub fn assert_valid_model(u: &Updater<Flash>, booted: &BootedSlot, images: &[Vec<u8>; 2]) -> u32 {
    let model = u
        .model(booted)
        .expect("the booted slot parses as a .glint model");
    model.verify().expect("the booted model verifies");
    let version = booted.manifest.model_version;
    assert!(version == 1 || version == 2, "booted version {version}");
    assert_eq!(
        model.provenance_value("model_version"),
        Some(version.to_string().as_str())
    );
    assert!(
        u.image(booted) == images[version as usize - 1].as_slice(),
        "slot {:?} holds exactly version {version}'s image",
        booted.slot
    );
    version
}
