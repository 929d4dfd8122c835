//! Block quantization: the reference (scalar) encoders and decoders of every dtype, and
//! bit-exact transcoding from the GGUF blocks whose math the int formats share.
//!
//! The runtime's SIMD kernels are tested against [`dequantize_row`]; the quantizer
//! packs with [`quantize`] and [`Planes`].

use crate::dtype::{BLOCK, DType, Matrix};
use half::f16;
use no_std_compat::vec::Vec;

fn f16_at(plane: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([plane[2 * i], plane[2 * i + 1]]).to_f32()
}

/// Decodes row `row` of `m` into `out` (`out.len() == m.cols`). The reference every
/// kernel is checked against.
pub fn dequantize_row(m: &Matrix<'_>, row: usize, out: &mut [f32]) {
    let cols = m.cols;
    assert_eq!(out.len(), cols, "output row length");
    let base = row * cols;
    match m.dtype {
        DType::F32 => {
            for (j, o) in out.iter_mut().enumerate() {
                let at = 4 * (base + j);
                *o = f32::from_le_bytes(m.values[at..at + 4].try_into().unwrap());
            }
        }
        DType::F16 => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = f16_at(m.values, base + j);
            }
        }
        DType::Q8G32 => {
            for (j, o) in out.iter_mut().enumerate() {
                let i = base + j;
                *o = f16_at(m.scales, i / BLOCK) * (m.values[i] as i8) as f32;
            }
        }
        DType::Q4G32A | DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => {
            let group = m.dtype.group().unwrap_or(BLOCK);
            for (b, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
                let first = base + b * BLOCK;
                let qs = &m.values[first / 2..first / 2 + BLOCK / 2];
                let d = f16_at(m.scales, first / group);
                let (offset, add) = if m.dtype == DType::Q4G32A {
                    (0.0, f16_at(m.mins, first / BLOCK))
                } else {
                    (8.0, 0.0)
                };
                for j in 0..BLOCK / 2 {
                    chunk[j] = d * ((qs[j] & 0x0f) as f32 - offset) + add;
                    chunk[j + BLOCK / 2] = d * ((qs[j] >> 4) as f32 - offset) + add;
                }
            }
        }
    }
}

/// The planes of one tensor being assembled; [`Planes::into_bytes`] lays them out as
/// the file stores them (see [`DType::plane_layout`]).
#[derive(Debug, Default)]
pub struct Planes {
    /// Values plane.
    pub values: Vec<u8>,
    /// f16 scales, little-endian.
    pub scales: Vec<u8>,
    /// f16 minimums, little-endian.
    pub mins: Vec<u8>,
}

impl Planes {
    /// Concatenates the planes with the alignment padding the format puts between them.
    pub fn into_bytes(self, dtype: DType, n: u64) -> Vec<u8> {
        let l = dtype.plane_layout(n);
        let mut out = alloc::vec![0u8; l.total as usize];
        for ((at, len), plane) in [
            (l.values, &self.values),
            (l.scales, &self.scales),
            (l.mins, &self.mins),
        ] {
            assert_eq!(
                len as usize,
                plane.len(),
                "plane length for {}",
                dtype.name()
            );
            out[at as usize..(at + len) as usize].copy_from_slice(plane);
        }
        out
    }

    /// Appends one GGUF `block_q4_1` (f16 d, f16 m, 16 nibble bytes) unchanged.
    pub fn push_q4_1_block(&mut self, block: &[u8; 20]) {
        self.scales.extend_from_slice(&block[0..2]);
        self.mins.extend_from_slice(&block[2..4]);
        self.values.extend_from_slice(&block[4..20]);
    }

    /// Appends one GGUF `block_q4_0` (f16 d, 16 nibble bytes) unchanged.
    pub fn push_q4_0_block(&mut self, block: &[u8; 18]) {
        self.scales.extend_from_slice(&block[0..2]);
        self.values.extend_from_slice(&block[2..18]);
    }

    /// Appends one GGUF `block_q8_0` (f16 d, 32 int8 values) unchanged.
    pub fn push_q8_0_block(&mut self, block: &[u8; 34]) {
        self.scales.extend_from_slice(&block[0..2]);
        self.values.extend_from_slice(&block[2..34]);
    }
}

fn push_f16(plane: &mut Vec<u8>, x: f32) -> f32 {
    let h = f16::from_f32(x);
    plane.extend_from_slice(&h.to_le_bytes());
    h.to_f32()
}

/// Quantizes row-major `data` (`rows * cols` elements) to `dtype` by round-to-nearest,
/// with the same arithmetic as ggml's reference quantizers (Q4_1, Q4_0, Q8_0), and
/// returns the tensor bytes as stored in the file. `cols` must be a multiple of the
/// group for quantized types.
pub fn quantize(dtype: DType, data: &[f32]) -> Vec<u8> {
    let n = data.len() as u64;
    let mut p = Planes::default();
    match dtype {
        DType::F32 => data
            .iter()
            .for_each(|x| p.values.extend_from_slice(&x.to_le_bytes())),
        DType::F16 => data.iter().for_each(|&x| {
            push_f16(&mut p.values, x);
        }),
        DType::Q8G32 => {
            for block in data.chunks_exact(BLOCK) {
                let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut p.scales, d);
                p.values
                    .extend(block.iter().map(|x| libm_round(x * id) as i8 as u8));
            }
        }
        DType::Q4G32A => {
            for block in data.chunks_exact(BLOCK) {
                let min = block.iter().fold(f32::INFINITY, |a, &x| a.min(x));
                let max = block.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut p.scales, d);
                push_f16(&mut p.mins, min);
                let q = |x: f32| (((x - min) * id + 0.5) as i8).min(15) as u8;
                for j in 0..BLOCK / 2 {
                    p.values.push(q(block[j]) | q(block[j + BLOCK / 2]) << 4);
                }
            }
        }
        DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => {
            let group = dtype.group().unwrap_or(BLOCK);
            for g in data.chunks_exact(group) {
                // The signed value of largest magnitude maps to -8, as in ggml's Q4_0.
                let max = g
                    .iter()
                    .fold(0f32, |a, &x| if x.abs() > a.abs() { x } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                push_f16(&mut p.scales, d);
                let q = |x: f32| ((x * id + 8.5) as i8).clamp(0, 15) as u8;
                for block in g.chunks_exact(BLOCK) {
                    for j in 0..BLOCK / 2 {
                        p.values.push(q(block[j]) | q(block[j + BLOCK / 2]) << 4);
                    }
                }
            }
        }
    }
    p.into_bytes(dtype, n)
}

/// Round half away from zero (C's `roundf`), without std.
fn libm_round(x: f32) -> f32 {
    let t = x as i32 as f32; // truncation toward zero; |x| <= 127 here
    if (x - t).abs() >= 0.5 {
        t + x.signum()
    } else {
        t
    }
}

/// `n` deterministic pseudo-random values in `[-1, 1)` from `seed` (xorshift32): the
/// one generator of test and benchmark data across the workspace, so a failing case
/// is reproduced from its seed alone.
pub fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(dtype: DType, rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
        let bytes = quantize(dtype, data);
        let m = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
        let mut out = alloc::vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            dequantize_row(&m, r, row);
        }
        out
    }

    fn sample(n: usize) -> Vec<f32> {
        test_values(n, 0x1234_5678)
    }

    #[test]
    fn every_dtype_round_trips_within_its_step() {
        let (rows, cols) = (3, 256);
        let data = sample(rows * cols);
        for dtype in [
            DType::F32,
            DType::F16,
            DType::Q8G32,
            DType::Q4G32A,
            DType::Q4G32,
            DType::Q4G64,
            DType::Q4G128,
        ] {
            let out = roundtrip(dtype, rows, cols, &data);
            let group = dtype.group().unwrap_or(1);
            for (g, (a, b)) in data.chunks(group).zip(out.chunks(group)).enumerate() {
                let amax = a.iter().fold(0f32, |m, x| m.max(x.abs()));
                let bound = match dtype {
                    DType::F32 => 0.0,
                    DType::F16 => amax / 1024.0,
                    DType::Q8G32 => amax / 127.0 * 0.5 + 1e-3 * amax,
                    DType::Q4G32A => 2.0 * amax / 15.0 * 0.5 + 1e-2 * amax,
                    _ => amax / 8.0 + 1e-2 * amax,
                };
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= bound,
                        "{} group {g}: {x} vs {y} (bound {bound})",
                        dtype.name()
                    );
                }
            }
        }
    }

    #[test]
    fn q4_1_blocks_transcode_bit_exactly() {
        let mut block = [0u8; 20];
        block[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for (j, b) in block[4..].iter_mut().enumerate() {
            *b = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut p = Planes::default();
        p.push_q4_1_block(&block);
        let bytes = p.into_bytes(DType::Q4G32A, 32);
        let m = Matrix::from_bytes(DType::Q4G32A, 1, 32, &bytes).unwrap();
        assert_eq!(m.values, &block[4..]);
        assert_eq!(m.scales, &block[0..2]);
        assert_eq!(m.mins, &block[2..4]);
        let mut row = [0f32; 32];
        dequantize_row(&m, 0, &mut row);
        assert_eq!(row[3], 0.25 * 3.0 - 1.0);
        assert_eq!(row[16 + 3], 0.25 * 12.0 - 1.0);
    }
}
