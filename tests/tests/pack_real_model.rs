//! Importing and packing SmolLM2-135M-Instruct from its GGUF: bit-exact Q4_1
//! transcoding, the other schemes within their error bounds, integrity.

mod common;

use glint_format::quant::dequantize_row;
use glint_format::{DType, GlintFile};
use glint_quantize::gguf::{GgmlType, GgufFile};
use glint_quantize::{Scheme, import, write_packed};

#[test]
fn q4g32a_blocks_are_bit_identical_to_the_source_q4_1_blocks() {
    let gguf_path = common::gguf_path();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.glint");
    write_packed(
        &import(&gguf_path).unwrap(),
        Scheme::Q4g32a,
        &out,
        |_, _| {},
    )
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let f = GlintFile::parse(&bytes).unwrap();
    f.verify().unwrap();
    let src = std::fs::read(&gguf_path).unwrap();
    let g = GgufFile::parse(&src).unwrap();
    let mut q4_1 = 0;
    for t in g.tensors() {
        let packed = f.tensor(t.name).unwrap();
        match t.ggml_type {
            GgmlType::Q4_1 => {
                assert_eq!(packed.dtype, DType::Q4G32A);
                let m = packed.matrix().unwrap();
                for (b, block) in t.data.chunks_exact(20).enumerate() {
                    assert_eq!(
                        &m.scales[2 * b..2 * b + 2],
                        &block[0..2],
                        "{} block {b} d",
                        t.name
                    );
                    assert_eq!(
                        &m.mins[2 * b..2 * b + 2],
                        &block[2..4],
                        "{} block {b} m",
                        t.name
                    );
                    assert_eq!(
                        &m.values[16 * b..16 * b + 16],
                        &block[4..20],
                        "{} block {b} nibbles",
                        t.name
                    );
                }
                q4_1 += 1;
            }
            GgmlType::Q8_0 => {
                assert_eq!(packed.dtype, DType::Q8G32);
                let m = packed.matrix().unwrap();
                for (b, block) in t.data.chunks_exact(34).enumerate() {
                    assert_eq!(&m.scales[2 * b..2 * b + 2], &block[0..2]);
                    assert_eq!(&m.values[32 * b..32 * b + 32], &block[2..34]);
                }
            }
            _ => assert_eq!(packed.bytes, t.data, "{}", t.name),
        }
    }
    assert_eq!(q4_1, 210);
}

#[test]
fn q4g128_and_q8_pack_within_their_error_bounds() {
    let gguf_path = common::gguf_path();
    let src = import(&gguf_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = std::fs::read(common::model_path()).unwrap();
    let reference = GlintFile::parse(&reference).unwrap();
    for (scheme, dtype, rel_bound) in [
        (Scheme::Q4g128, DType::Q4G128, 0.25),
        (Scheme::Q8, DType::Q8G32, 0.02),
    ] {
        let out = dir.path().join(format!("{}.glint", scheme.name()));
        write_packed(&src, scheme, &out, |_, _| {}).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let f = GlintFile::parse(&bytes).unwrap();
        f.verify().unwrap();
        assert_eq!(f.provenance_value("scheme"), Some(scheme.name()));
        // Compare a matrix against the source weights (dequantized q4g32a == Q4_1 exactly);
        // ffn_down has 1536 columns, a whole number of 128-groups.
        let name = "blk.3.ffn_down.weight";
        let (a, b) = (
            reference.tensor(name).unwrap().matrix().unwrap(),
            f.tensor(name).unwrap().matrix().unwrap(),
        );
        assert_eq!(b.dtype, dtype);
        let (mut ra, mut rb) = (vec![0f32; a.cols], vec![0f32; b.cols]);
        let (mut err, mut norm) = (0f64, 0f64);
        for r in 0..a.rows {
            dequantize_row(&a, r, &mut ra);
            dequantize_row(&b, r, &mut rb);
            for (x, y) in ra.iter().zip(&rb) {
                err += ((x - y) as f64).powi(2);
                norm += (*x as f64).powi(2);
            }
        }
        let rel = (err / norm).sqrt();
        eprintln!("{}: relative RMS error {rel:.4}", scheme.name());
        // 576-column matrices fall back to group 64 under q4g128.
        if scheme == Scheme::Q4g128 {
            assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().dtype, DType::Q4G64);
        }
        assert!(rel < rel_bound, "{}: relative error {rel}", scheme.name());
    }
}

/// SmolLM2's GGUF carries no `general.sampling.*` keys: the import takes the model card's
/// recommendation from the table (`glint_models::known_sampling`) into the packed file.
#[test]
fn the_packed_default_model_carries_its_recommended_sampling() {
    let f = glint_format::LoadedGlint::open(common::model_path()).unwrap();
    let d = f.file().config().sampling.expect("recommended sampling");
    assert_eq!((d.temperature, d.top_p), (0.2, 0.9));
    assert_eq!(Some(d), glint_models::known_sampling("smollm2"));
}
