//! The portable reference kernel: dequantizes one 32-element block at a time into a stack
//! buffer (same arithmetic as `glint_format::quant::dequantize_row`) and dots it with up
//! to [`ACTS`] activation rows. Deliberately simple and independent of the SIMD tiling
//! driver, so the SIMD kernels have something trustworthy to be tested against.

use core::ops::Range;

use glint_format::{BLOCK, DType, Matrix};
use half::f16;

use super::Out;

/// Activation rows sharing one dequantized block.
const ACTS: usize = 8;

fn f16_at(plane: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([plane[2 * i], plane[2 * i + 1]]).to_f32()
}

/// Dequantizes elements `c0..c0 + out.len()` of row `r` (`out.len() <= BLOCK`, and for
/// quantized types `c0` is block-aligned and `out.len() == BLOCK`).
fn dequantize(w: &Matrix<'_>, r: usize, c0: usize, out: &mut [f32]) {
    let base = r * w.cols + c0;
    match w.dtype {
        DType::F32 => {
            for (j, o) in out.iter_mut().enumerate() {
                let at = 4 * (base + j);
                *o = f32::from_le_bytes([
                    w.values[at],
                    w.values[at + 1],
                    w.values[at + 2],
                    w.values[at + 3],
                ]);
            }
        }
        DType::F16 => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = f16_at(w.values, base + j);
            }
        }
        DType::Q8G32 => {
            let d = f16_at(w.scales, base / BLOCK);
            for (j, o) in out.iter_mut().enumerate() {
                *o = d * (w.values[base + j] as i8) as f32;
            }
        }
        DType::Q4G32A | DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => {
            let group = w.dtype.group().unwrap_or(BLOCK);
            let qs = &w.values[base / 2..base / 2 + BLOCK / 2];
            let d = f16_at(w.scales, base / group);
            let (offset, add) = if w.dtype == DType::Q4G32A {
                (0.0, f16_at(w.mins, base / BLOCK))
            } else {
                (8.0, 0.0)
            };
            let (lo, hi) = out.split_at_mut(BLOCK / 2);
            for ((q, l), h) in qs.iter().zip(lo).zip(hi) {
                *l = d * ((q & 0x0f) as f32 - offset) + add;
                *h = d * ((q >> 4) as f32 - offset) + add;
            }
        }
    }
}

/// # Safety
/// `super::check(w, x, n, &rows)` must have passed and `out` must be writable at every
/// `(i, r)`, `i < n`, `r` in `rows`.
pub(super) unsafe fn run(w: &Matrix<'_>, x: &[f32], n: usize, rows: Range<usize>, out: Out) {
    let cols = w.cols;
    let mut block = [0f32; BLOCK];
    for r in rows {
        for i0 in (0..n).step_by(ACTS) {
            let acts = (n - i0).min(ACTS);
            let mut acc = [0f32; ACTS];
            for c0 in (0..cols).step_by(BLOCK) {
                let len = (cols - c0).min(BLOCK);
                let wb = &mut block[..len];
                dequantize(w, r, c0, wb);
                for (i, a) in acc.iter_mut().enumerate().take(acts) {
                    let xb = &x[(i0 + i) * cols + c0..][..len];
                    *a += wb.iter().zip(xb).map(|(w, x)| w * x).sum::<f32>();
                }
            }
            for (i, &a) in acc.iter().enumerate().take(acts) {
                // SAFETY: `i0 + i < n` and `r` is in `rows`, as the caller vouched.
                unsafe { out.write(i0 + i, r, a) };
            }
        }
    }
}
