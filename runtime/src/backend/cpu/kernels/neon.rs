//! aarch64 NEON kernels (4 f32 lanes, 32 vector registers): the exact path for every
//! dtype and the int8-activation path in two variants, base NEON (ARMv8.0) and `sdot`
//! (the ARMv8.2 `dotprod` extension).
//!
//! Same tiling as `avx2.rs` through the shared `drive`/`drive_q`: one activation row
//! (decode) takes tiles of 4 weight rows, several take 1 weight row x 8 activations
//! (exact) or 1 x 4 (int8). NEON is baseline on aarch64, so the exact-path and base
//! int8 tiles need no `target_feature`; only the `sdot` tiles do.
//!
//! Exact path: int4 nibbles are split (`and`, `ushr`), widened twice (`uxtl`) and
//! converted (`ucvtf`); one activation row uses the factored form
//! `d * sum(q x) + m * sum(x)` as AVX2 does, several dequantize `w = d q + m` once and
//! reuse it. f16 goes through `fcvtl` in `asm!` (ARMv8.0 AdvSIMD; Rust's f16 vector
//! types and their intrinsics are unstable).
//!
//! int8 activations (`int8.rs`, natural-order rows): per chunk of 4 blocks and
//! (weight row, activation row), each block's integer dot product is a 4-lane partial
//! sum, either widening multiplies (`smull`/`smlal2`, then `saddlp`) or two `sdot`s; the
//! 4 blocks' partial sums are folded to one lane per block with 3 `addp`, converted once
//! and scaled with one FMA by the lane-wise `dw dx`; the minimum term `m * d_x sum(q_x)`
//! is one more FMA per chunk. `vdotq_s32` is unstable on stable Rust, hence `sdot`
//! through `asm!` in `#[target_feature(enable = "dotprod")]` functions.

use core::arch::aarch64::*;
use core::arch::asm;
use core::ops::Range;

use glint_format::{BLOCK, DType, Matrix};

use super::int8::{QuantActs, drive_q};
use super::{Out, drive};

/// Weight rows per tile for a single activation row (exact path): 4 rows x 8 dequantized
/// vectors plus the 8 activation vectors fill the 32 registers without spilling.
const MV_ROWS: usize = 4;
/// Weight rows per tile for several activation rows (exact path).
const MM_ROWS: usize = 1;
/// Activation rows per tile (exact path): 8 dequantized weight vectors, 8 activation
/// vectors and 8 accumulators.
const MM_ACTS: usize = 8;
/// Activation rows per tile for a remainder of at most this many rows (exact path).
const MM_REST: usize = 4;

/// Blocks per chunk: one 4-lane vector of block scales.
const CHUNK: usize = 4;

/// # Safety
/// `super::check(w, x, n, &rows)` must have passed; `out` must be writable at every
/// `(i, r)`, `i < n`, `r` in `rows`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn run(w: &Matrix<'_>, x: &[f32], n: usize, rows: Range<usize>, out: Out) {
    macro_rules! go {
        ($tile:ident, $p:expr) => {
            if n == 1 {
                // SAFETY: the tiles get in-range rows and activation pointers from `drive`
                // and the planes were validated by `check`.
                unsafe {
                    drive::<MV_ROWS, 1, 1>(
                        x,
                        w.cols,
                        n,
                        rows,
                        out,
                        |r, xs| $tile::<MV_ROWS, 1, $p>(w, r, xs),
                        |r, xs| $tile::<MV_ROWS, 1, $p>(w, r, xs),
                    )
                }
            } else {
                // SAFETY: as above.
                unsafe {
                    drive::<MM_ROWS, MM_ACTS, MM_REST>(
                        x,
                        w.cols,
                        n,
                        rows,
                        out,
                        |r, xs| $tile::<MM_ROWS, MM_ACTS, $p>(w, r, xs),
                        |r, xs| $tile::<MM_ROWS, MM_REST, $p>(w, r, xs),
                    )
                }
            }
        };
    }
    match w.dtype {
        DType::F32 => go!(float_tile, false),
        DType::F16 => go!(float_tile, true),
        DType::Q8G32 => go!(quant_tile, true),
        DType::Q4G32A | DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => go!(quant_tile, false),
    }
}

/// Widens 4 f16 (in the low half of a register) to f32.
#[inline]
#[target_feature(enable = "neon")]
fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: `fcvtl` is ARMv8.0 AdvSIMD (baseline on aarch64) and touches registers only.
    unsafe {
        asm!(
            "fcvtl {r:v}.4s, {h:v}.4h",
            r = lateout(vreg) r,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

/// Widens 8 f16 to two vectors of f32 (elements 0..4, 4..8).
#[inline]
#[target_feature(enable = "neon")]
fn cvt_f16x8(h: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: as in `cvt_f16x4`.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            // `lo` is written before `h` is read again: not `lateout`.
            lo = out(vreg) lo,
            hi = lateout(vreg) hi,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    [lo, hi]
}

/// The `count` (1..=4) little-endian f16 values at byte `at` of `plane` as f32 lanes,
/// lanes past `count` zero. Reads 4 values straight from the plane when they are there,
/// else goes through a zero-padded copy.
///
/// # Safety
/// `plane[at..at + 2 * count]` must be in bounds.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_f16x4(plane: &[u8], at: usize, count: usize) -> float32x4_t {
    let h = if at + 8 <= plane.len() {
        // SAFETY: 8 bytes in bounds, checked just above; `ld1` has no alignment needs.
        unsafe { vld1_u16(plane.as_ptr().add(at).cast()) }
    } else {
        let mut buf = [0u16; 4];
        // SAFETY: `count <= 4` values fit `buf` and are in the plane, by the caller.
        unsafe {
            core::ptr::copy_nonoverlapping(
                plane.as_ptr().add(at),
                buf.as_mut_ptr().cast::<u8>(),
                2 * count,
            );
            vld1_u16(buf.as_ptr())
        }
    };
    let lanes: [u32; 4] = [0, 1, 2, 3];
    // SAFETY: `lanes` holds 4 u32.
    let keep = vcltq_u32(
        unsafe { vld1q_u32(lanes.as_ptr()) },
        vdupq_n_u32(count as u32),
    );
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(cvt_f16x4(h)), keep))
}

/// Scales `d` and minimums `m` (stored for Q4G32A, `-8 d` for symmetric int4, unused
/// for int8) of blocks `b0..b0 + cnt` of row `r`, one block per lane, lanes past `cnt`
/// zero (so a garbage scale can never meet a zero product as `inf * 0`).
///
/// # Safety
/// `r` is a row of the validated planes, `b0` a multiple of [`CHUNK`] below the row's
/// block count and `b0 + cnt` at most that count.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_scales(
    w: &Matrix<'_>,
    r: usize,
    b0: usize,
    cnt: usize,
) -> (float32x4_t, float32x4_t) {
    let nb = w.cols / BLOCK;
    // Blocks per scale: 1, 2 or 4. `cols` is a multiple of the group, so a row starts on
    // a group boundary, and so does a chunk (a multiple of 4 blocks).
    let per = w.dtype.group().unwrap_or(BLOCK) / BLOCK;
    let first = r * nb + b0;
    // SAFETY: the chunk's `ceil(cnt / per)` scales and `cnt` minimums lie in the row.
    unsafe {
        let d = load_f16x4(w.scales, 2 * (first / per), cnt.div_ceil(per));
        let d = match per {
            1 => d,
            2 => vzip1q_f32(d, d),
            _ => vdupq_laneq_f32::<0>(d),
        };
        let m = match w.dtype {
            DType::Q4G32A => load_f16x4(w.mins, 2 * first, cnt),
            _ => vmulq_n_f32(d, -8.0),
        };
        (d, m)
    }
}

/// The 32 int4 weights of the block at `p` (16 bytes: low nibbles are elements 0..16,
/// high nibbles 16..32) as f32, 4 per vector, in element order.
///
/// # Safety
/// `p` must be readable for 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q4_f32(p: *const u8) -> [float32x4_t; 8] {
    // SAFETY: by the caller.
    let v = unsafe { vld1q_u8(p) };
    let lo = vandq_u8(v, vdupq_n_u8(0x0f));
    let hi = vshrq_n_u8::<4>(v);
    let mut q = [vdupq_n_f32(0.0); 8];
    for (h, half) in [lo, hi].into_iter().enumerate() {
        let a = vmovl_u8(vget_low_u8(half));
        let b = vmovl_high_u8(half);
        q[4 * h] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a)));
        q[4 * h + 1] = vcvtq_f32_u32(vmovl_high_u16(a));
        q[4 * h + 2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(b)));
        q[4 * h + 3] = vcvtq_f32_u32(vmovl_high_u16(b));
    }
    q
}

/// The 32 int8 weights at `p` as f32, 4 per vector.
///
/// # Safety
/// `p` must be readable for 32 bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q8_f32(p: *const u8) -> [float32x4_t; 8] {
    let mut q = [vdupq_n_f32(0.0); 8];
    for h in 0..2 {
        // SAFETY: by the caller.
        let v = unsafe { vld1q_s8(p.add(16 * h).cast()) };
        let a = vmovl_s8(vget_low_s8(v));
        let b = vmovl_high_s8(v);
        q[4 * h] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
        q[4 * h + 1] = vcvtq_f32_s32(vmovl_high_s16(a));
        q[4 * h + 2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(b)));
        q[4 * h + 3] = vcvtq_f32_s32(vmovl_high_s16(b));
    }
    q
}

/// Loads 32 f32 at `p`.
///
/// # Safety
/// `p` must be readable for 32 f32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_x8(p: *const f32) -> [float32x4_t; 8] {
    let mut x = [vdupq_n_f32(0.0); 8];
    for (j, v) in x.iter_mut().enumerate() {
        // SAFETY: by the caller.
        *v = unsafe { vld1q_f32(p.add(4 * j)) };
    }
    x
}

/// `sum_j q[j] * x[j]` (lane-wise) as two FMA chains: one chain of 8 would be bound by
/// the 4-cycle FMA latency.
#[inline]
#[target_feature(enable = "neon")]
fn dot8(q: &[float32x4_t; 8], x: &[float32x4_t; 8]) -> float32x4_t {
    let mut t0 = vmulq_f32(q[0], x[0]);
    let mut t1 = vmulq_f32(q[1], x[1]);
    for j in (2..8).step_by(2) {
        t0 = vfmaq_f32(t0, q[j], x[j]);
        t1 = vfmaq_f32(t1, q[j + 1], x[j + 1]);
    }
    vaddq_f32(t0, t1)
}

/// Whether a tile keeps a second accumulator set: with fewer than 8 (row, activation)
/// pairs one FMA chain per pair would be latency-bound.
const fn split(r: usize, n: usize) -> bool {
    r * n < 8
}

/// Horizontal sums of the two accumulator sets.
#[inline]
#[target_feature(enable = "neon")]
fn reduce<const R: usize, const N: usize>(
    a: &[[float32x4_t; N]; R],
    b: &[[float32x4_t; N]; R],
) -> [[f32; N]; R] {
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = vaddvq_f32(vaddq_f32(a[k][i], b[k][i]));
        }
    }
    res
}

/// Block-quantized tile of the exact path: int8 (`Q8`) or int4 (any group, with or
/// without minimums).
///
/// # Safety
/// As for [`run`]; `rows` are valid row indices and every `xs[i]` has `w.cols` elements.
#[target_feature(enable = "neon")]
unsafe fn quant_tile<const R: usize, const N: usize, const Q8: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let mut acc0 = [[vdupq_n_f32(0.0); N]; R];
    let mut acc1 = acc0;
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(CHUNK);
        let mut ds = [[0f32; CHUNK]; R];
        let mut ms = [[0f32; CHUNK]; R];
        for k in 0..R {
            // SAFETY: `rows[k]` is valid and the chunk lies in the row.
            unsafe {
                let (d, m) = block_scales(w, rows[k], b0, cnt);
                vst1q_f32(ds[k].as_mut_ptr(), d);
                vst1q_f32(ms[k].as_mut_ptr(), m);
            }
        }
        for b in 0..cnt {
            let blk = b0 + b;
            let mut q = [[vdupq_n_f32(0.0); 8]; R];
            for (k, qk) in q.iter_mut().enumerate() {
                // SAFETY: block `blk` of row `rows[k]` lies in the validated plane.
                *qk = unsafe {
                    if Q8 {
                        q8_f32(w.values.as_ptr().add(rows[k] * cols + blk * BLOCK))
                    } else {
                        q4_f32(w.values.as_ptr().add(rows[k] * cols / 2 + blk * BLOCK / 2))
                    }
                };
            }
            if N == 1 {
                // SAFETY: 32 activations at `blk * 32 < cols`.
                let x = unsafe { load_x8(xs[0].add(blk * BLOCK)) };
                let sx = if Q8 {
                    vdupq_n_f32(0.0)
                } else {
                    let s = [
                        vaddq_f32(x[0], x[1]),
                        vaddq_f32(x[2], x[3]),
                        vaddq_f32(x[4], x[5]),
                        vaddq_f32(x[6], x[7]),
                    ];
                    vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]))
                };
                for k in 0..R {
                    acc0[k][0] = vfmaq_n_f32(acc0[k][0], dot8(&q[k], &x), ds[k][b]);
                    if !Q8 {
                        acc1[k][0] = vfmaq_n_f32(acc1[k][0], sx, ms[k][b]);
                    }
                }
            } else {
                for (k, qk) in q.iter_mut().enumerate() {
                    let m = vdupq_n_f32(if Q8 { 0.0 } else { ms[k][b] });
                    for v in qk.iter_mut() {
                        *v = vfmaq_n_f32(m, *v, ds[k][b]);
                    }
                }
                for i in 0..N {
                    // SAFETY: 32 activations of row `i` at `blk * 32 < cols`.
                    let x = unsafe { load_x8(xs[i].add(blk * BLOCK)) };
                    for k in 0..R {
                        for j in 0..8 {
                            let a = if split(R, N) && j % 2 == 1 {
                                &mut acc1[k][i]
                            } else {
                                &mut acc0[k][i]
                            };
                            *a = vfmaq_f32(*a, q[k][j], x[j]);
                        }
                    }
                }
            }
        }
        b0 += cnt;
    }
    reduce(&acc0, &acc1)
}

/// Loads 16 weights at `p` (f16 when `HALF`, else f32) as 4 vectors.
///
/// # Safety
/// `p` must be readable for 16 elements.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn load_w16<const HALF: bool>(p: *const u8) -> [float32x4_t; 4] {
    // SAFETY: by the caller; `ld1` has no alignment needs.
    unsafe {
        if HALF {
            let [a, b] = cvt_f16x8(vld1q_u16(p.cast()));
            let [c, d] = cvt_f16x8(vld1q_u16(p.add(16).cast()));
            [a, b, c, d]
        } else {
            let p = p.cast::<f32>();
            [
                vld1q_f32(p),
                vld1q_f32(p.add(4)),
                vld1q_f32(p.add(8)),
                vld1q_f32(p.add(12)),
            ]
        }
    }
}

/// One 16-column step of [`float_tile`].
///
/// # Safety
/// Every `wp[k]` must be readable for 16 weights and every `xp[i]` for 16 f32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn float_step<const R: usize, const N: usize, const HALF: bool>(
    wp: &[*const u8; R],
    xp: &[*const f32; N],
    acc0: &mut [[float32x4_t; N]; R],
    acc1: &mut [[float32x4_t; N]; R],
) {
    // SAFETY: 16 weights readable at `wp[k]`, by the caller.
    let wv: [[float32x4_t; 4]; R] = core::array::from_fn(|k| unsafe { load_w16::<HALF>(wp[k]) });
    for i in 0..N {
        // SAFETY: 16 f32 readable at `xp[i]`, by the caller.
        let x = unsafe { load_w16::<false>(xp[i].cast()) };
        for k in 0..R {
            for j in 0..4 {
                let a = if split(R, N) && j % 2 == 1 {
                    &mut acc1[k][i]
                } else {
                    &mut acc0[k][i]
                };
                *a = vfmaq_f32(*a, wv[k][j], x[j]);
            }
        }
    }
}

/// f32 (`HALF` false) / f16 tile (any column count: the last partial 16 columns go
/// through zero-padded stack copies).
///
/// # Safety
/// As for [`quant_tile`].
#[target_feature(enable = "neon")]
unsafe fn float_tile<const R: usize, const N: usize, const HALF: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    const STEP: usize = 16;
    let cols = w.cols;
    let esize = if HALF { 2 } else { 4 };
    let main = cols / STEP * STEP;
    let mut acc0 = [[vdupq_n_f32(0.0); N]; R];
    let mut acc1 = acc0;
    // SAFETY: each row `rows[k]` spans `cols * esize` bytes of the validated plane.
    let wrow: [*const u8; R] =
        core::array::from_fn(|k| unsafe { w.values.as_ptr().add(rows[k] * cols * esize) });
    let mut c = 0;
    while c < main {
        // SAFETY: `c + 16 <= cols` for the weight rows and the activation rows.
        unsafe {
            let wp = core::array::from_fn(|k| wrow[k].add(c * esize));
            let xp = core::array::from_fn(|i| xs[i].add(c));
            float_step::<R, N, HALF>(&wp, &xp, &mut acc0, &mut acc1);
        }
        c += STEP;
    }
    if main < cols {
        let tail = cols - main;
        let mut wbuf = [[0u8; STEP * 4]; R];
        let mut xbuf = [[0f32; STEP]; N];
        for k in 0..R {
            // SAFETY: the last `tail` weights of the row are in the plane; the buffer has
            // room for 16 f32.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    wrow[k].add(main * esize),
                    wbuf[k].as_mut_ptr(),
                    tail * esize,
                )
            };
        }
        for i in 0..N {
            // SAFETY: the last `tail` activations of row `i`; the buffer holds 16.
            unsafe { core::ptr::copy_nonoverlapping(xs[i].add(main), xbuf[i].as_mut_ptr(), tail) };
        }
        let wp = core::array::from_fn(|k| wbuf[k].as_ptr());
        let xp = core::array::from_fn(|i| xbuf[i].as_ptr());
        // SAFETY: the zero-padded buffers hold 16 elements each.
        unsafe { float_step::<R, N, HALF>(&wp, &xp, &mut acc0, &mut acc1) };
    }
    reduce(&acc0, &acc1)
}

// ---------------------------------------------------------------------------------------
// int8 activations, see `int8.rs`.

/// Weight rows per tile, one activation row (decode).
const Q_MV_ROWS: usize = 4;
/// Weight rows per tile, several activation rows (prefill): one row's 8 weight vectors
/// per chunk stay in registers while the activation rows go past them.
const Q_MM_ROWS: usize = 1;
/// Activation rows per tile (prefill): 8 weight + 8 activation vectors, 4 partial sums
/// and 4 accumulators fit the 32 registers.
const Q_MM_ACTS: usize = 4;
/// Activation rows per tile for a remainder of at most this many rows.
const Q_MM_REST: usize = 2;

/// One block's integer dot product as a 4-lane partial sum (the lanes add up to it).
trait BlockDot {
    /// int4 block: `lo` the low nibbles (elements 0..16, values 0..=15), `hi` the high
    /// ones (16..32), against activations `x0` (0..16) and `x1` (16..32).
    ///
    /// # Safety
    /// The CPU must have the instructions the implementation uses.
    unsafe fn q4(lo: int8x16_t, x0: int8x16_t, hi: int8x16_t, x1: int8x16_t) -> int32x4_t;
    /// int8 block: weights `w0` (elements 0..16), `w1` (16..32).
    ///
    /// # Safety
    /// As for [`BlockDot::q4`].
    unsafe fn q8(w0: int8x16_t, x0: int8x16_t, w1: int8x16_t, x1: int8x16_t) -> int32x4_t;
}

/// ARMv8.0: widening multiplies into i16 lanes, then pairwise widening adds.
struct Widen;

impl BlockDot for Widen {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn q4(lo: int8x16_t, x0: int8x16_t, hi: int8x16_t, x1: int8x16_t) -> int32x4_t {
        // Four products of at most 15 * 128 per i16 lane: at most 7680, no overflow.
        let p = vmull_s8(vget_low_s8(lo), vget_low_s8(x0));
        let p = vmlal_high_s8(p, lo, x0);
        let p = vmlal_s8(p, vget_low_s8(hi), vget_low_s8(x1));
        let p = vmlal_high_s8(p, hi, x1);
        vpaddlq_s16(p)
    }

    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn q8(w0: int8x16_t, x0: int8x16_t, w1: int8x16_t, x1: int8x16_t) -> int32x4_t {
        // Two products of at most 128 * 127 per i16 lane: at most 32512, no overflow.
        let p = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
        let r = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
        vpadalq_s16(vpaddlq_s16(p), r)
    }
}

/// ARMv8.2 `dotprod`: `sdot` (4 products summed into each i32 lane).
struct Sdot;

/// `acc + sdot(a, b)`: lane `l` gains `sum_{j < 4} a[4l + j] * b[4l + j]`.
#[target_feature(enable = "dotprod")]
#[inline]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` touches registers only; this function is only compiled into code
    // that runs after `dotprod` was detected (its `target_feature` makes every caller
    // without the feature `unsafe`).
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

impl BlockDot for Sdot {
    #[inline]
    #[target_feature(enable = "dotprod")]
    unsafe fn q4(lo: int8x16_t, x0: int8x16_t, hi: int8x16_t, x1: int8x16_t) -> int32x4_t {
        sdot(sdot(vdupq_n_s32(0), lo, x0), hi, x1)
    }

    #[inline]
    #[target_feature(enable = "dotprod")]
    unsafe fn q8(w0: int8x16_t, x0: int8x16_t, w1: int8x16_t, x1: int8x16_t) -> int32x4_t {
        sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1)
    }
}

/// # Safety
/// `int8::check_q` must have passed; `out` must be writable at every `(i, r)`,
/// `i < a.rows()`, `r` in `rows`; with `dot`, the CPU must have `dotprod`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn run_q8act(
    w: &Matrix<'_>,
    a: &QuantActs,
    rows: Range<usize>,
    out: Out,
    dot: bool,
) {
    let n = a.rows();
    macro_rules! go {
        ($tile:ident, $q8:expr) => {
            if n == 1 {
                // SAFETY: `drive_q` hands the tiles in-range rows and activation indices;
                // the planes were validated by `check_q`; dotprod (for the `sdot` tiles)
                // is our caller's contract.
                unsafe {
                    drive_q::<Q_MV_ROWS, 1, 1>(
                        n,
                        rows,
                        out,
                        |r, i| $tile::<Q_MV_ROWS, 1, $q8>(w, r, a, i),
                        |r, i| $tile::<Q_MV_ROWS, 1, $q8>(w, r, a, i),
                    )
                }
            } else {
                // SAFETY: as above.
                unsafe {
                    drive_q::<Q_MM_ROWS, Q_MM_ACTS, Q_MM_REST>(
                        n,
                        rows,
                        out,
                        |r, i| $tile::<Q_MM_ROWS, Q_MM_ACTS, $q8>(w, r, a, i),
                        |r, i| $tile::<Q_MM_ROWS, Q_MM_REST, $q8>(w, r, a, i),
                    )
                }
            }
        };
    }
    match (dot, w.dtype == DType::Q8G32) {
        (false, false) => go!(tile_widen, false),
        (false, true) => go!(tile_widen, true),
        (true, false) => go!(tile_sdot, false),
        (true, true) => go!(tile_sdot, true),
    }
}

/// [`q_tile`] with widening multiplies (ARMv8.0).
///
/// # Safety
/// As for [`q_tile`].
#[target_feature(enable = "neon")]
unsafe fn tile_widen<const R: usize, const N: usize, const Q8: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    // SAFETY: forwarded; `Widen` needs only baseline NEON.
    unsafe { q_tile::<Widen, R, N, Q8>(w, rows, a, acts) }
}

/// [`q_tile`] with `sdot`.
///
/// # Safety
/// As for [`q_tile`]; the CPU must have `dotprod`.
#[target_feature(enable = "dotprod")]
unsafe fn tile_sdot<const R: usize, const N: usize, const Q8: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    // SAFETY: forwarded; dotprod is our contract.
    unsafe { q_tile::<Sdot, R, N, Q8>(w, rows, a, acts) }
}

/// int8 (`Q8`) or int4 weights x int8 activations tile, in chunks of 4 blocks (see the
/// module docs).
///
/// # Safety
/// `check_q` passed; `rows` valid; `acts` `< a.rows()`; the CPU has what `D` uses.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q_tile<D: BlockDot, const R: usize, const N: usize, const Q8: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    let nb = w.cols / BLOCK;
    let mut acc = [[vdupq_n_f32(0.0); N]; R];
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(CHUNK);
        // SAFETY: forwarded; the chunk lies in the rows.
        unsafe {
            if cnt == CHUNK {
                q_chunk::<D, R, N, Q8, true>(w, rows, a, acts, Chunk { b0, cnt }, &mut acc);
            } else {
                q_chunk::<D, R, N, Q8, false>(w, rows, a, acts, Chunk { b0, cnt }, &mut acc);
            }
        }
        b0 += CHUNK;
    }
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = vaddvq_f32(acc[k][i]);
        }
    }
    res
}

/// The weight vectors of blocks `b0..b0 + cnt` of row `r` (two per block: low and high
/// nibbles for int4, elements 0..16 and 16..32 for int8); zero past `cnt` (`FULL`:
/// `cnt` is 4).
///
/// # Safety
/// `r` a valid row; the blocks lie in it.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn chunk_weights<const Q8: bool, const FULL: bool>(
    w: &Matrix<'_>,
    r: usize,
    b0: usize,
    cnt: usize,
) -> [int8x16_t; 2 * CHUNK] {
    let mut v = [vdupq_n_s8(0); 2 * CHUNK];
    for j in 0..CHUNK {
        if FULL || j < cnt {
            let blk = b0 + j;
            // SAFETY: block `blk` of row `r` lies in the validated plane.
            unsafe {
                if Q8 {
                    let p = w.values.as_ptr().add(r * w.cols + blk * BLOCK).cast::<i8>();
                    v[2 * j] = vld1q_s8(p);
                    v[2 * j + 1] = vld1q_s8(p.add(16));
                } else {
                    let q = vld1q_u8(w.values.as_ptr().add(r * w.cols / 2 + blk * BLOCK / 2));
                    v[2 * j] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
                    v[2 * j + 1] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
                }
            }
        }
    }
    v
}

/// Where one chunk of [`q_tile`] is: its first block and how many blocks it has.
#[derive(Clone, Copy)]
struct Chunk {
    b0: usize,
    cnt: usize,
}

/// One chunk of 4 blocks (`FULL`) or of the last `cnt < 4` of [`q_tile`], added to `acc`.
///
/// # Safety
/// As for [`q_tile`]; the chunk's `b0` a multiple of 4, `b0 + cnt` at most the row's
/// block count.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q_chunk<D: BlockDot, const R: usize, const N: usize, const Q8: bool, const FULL: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &QuantActs,
    acts: &[usize; N],
    Chunk { b0, cnt }: Chunk,
    acc: &mut [[float32x4_t; N]; R],
) {
    let (sn, sk) = (a.stride_nat(), a.stride_blk());
    let mut d = [vdupq_n_f32(0.0); R];
    let mut m = [vdupq_n_f32(0.0); R];
    for k in 0..R {
        // SAFETY: forwarded.
        (d[k], m[k]) = unsafe { block_scales(w, rows[k], b0, cnt) };
    }
    // With several activation rows each weight row's vectors are made once per chunk;
    // with one they are made where they are used (fewer live registers).
    let mut hoisted = [[vdupq_n_s8(0); 2 * CHUNK]; R];
    if N > 1 {
        for k in 0..R {
            // SAFETY: forwarded.
            hoisted[k] = unsafe { chunk_weights::<Q8, FULL>(w, rows[k], b0, cnt) };
        }
    }
    for i in 0..N {
        // SAFETY: the natural-order row is zero-padded to a multiple of 64 bytes and only
        // the chunk's blocks are read; the block arrays are padded to a multiple of 16
        // blocks per row, and `b0 + 4` does not pass that.
        let (x, dx, sx) = unsafe {
            let p = a.nat.as_ptr().add(acts[i] * sn + b0 * BLOCK);
            let mut x = [vdupq_n_s8(0); 2 * CHUNK];
            for (j, v) in x.iter_mut().enumerate() {
                if FULL || j / 2 < cnt {
                    *v = vld1q_s8(p.add(16 * j));
                }
            }
            let at = acts[i] * sk + b0;
            (
                x,
                vld1q_f32(a.d.as_ptr().add(at)),
                vld1q_f32(a.s.as_ptr().add(at)),
            )
        };
        for k in 0..R {
            let wv = if N > 1 {
                hoisted[k]
            } else {
                // SAFETY: forwarded.
                unsafe { chunk_weights::<Q8, FULL>(w, rows[k], b0, cnt) }
            };
            let mut p = [vdupq_n_s32(0); CHUNK];
            for (j, pj) in p.iter_mut().enumerate() {
                if FULL || j < cnt {
                    let (w0, x0, w1, x1) = (wv[2 * j], x[2 * j], wv[2 * j + 1], x[2 * j + 1]);
                    // SAFETY: the CPU has what `D` uses (our contract).
                    *pj = unsafe {
                        if Q8 {
                            D::q8(w0, x0, w1, x1)
                        } else {
                            D::q4(w0, x0, w1, x1)
                        }
                    };
                }
            }
            // One lane per block.
            let s = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
            acc[k][i] = vfmaq_f32(acc[k][i], vcvtq_f32_s32(s), vmulq_f32(d[k], dx));
            if !Q8 {
                acc[k][i] = vfmaq_f32(acc[k][i], m[k], sx);
            }
        }
    }
}

/// The activation row quantizer, bit-identical to `int8::quantize_row_scalar`: per
/// block, `amax` from `fabs`/`fmax` (exact in any order), the same scalar `d` and `1 / d`,
/// `fcvtns` (round to nearest, ties to even, as the scalar `1.5 * 2^23` trick) of
/// `x * (1 / d)`, saturating narrows (`sqxtn`, values already in `-127..=127`) to the
/// int8 row, and the integer sums (block sum and the `-128 *` sums of 4 that the x86
/// VNNI kernels read) from the i32 lanes with `addp`. 75 instructions per 32 values in
/// the disassembly (2 of them the scalar `fdiv`s of `d` and `1 / d`).
///
/// # Safety
/// `x.len()` a multiple of 32; `q` holds `x.len()` values, `d` and `s` `x.len() / 32`,
/// `corr` `x.len() / 4`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize_row(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    corr: &mut [i32],
) {
    let nb = x.len() / BLOCK;
    assert!(q.len() >= x.len() && d.len() >= nb && s.len() >= nb && corr.len() >= x.len() / 4);
    for b in 0..nb {
        // SAFETY: block `b` is in bounds of every slice (asserted above); `ld1`/`st1`
        // have no alignment needs.
        unsafe {
            let p = x.as_ptr().add(b * BLOCK);
            let v: [float32x4_t; 8] = core::array::from_fn(|j| vld1q_f32(p.add(4 * j)));
            let mut m = vabsq_f32(v[0]);
            for vj in &v[1..] {
                m = vmaxq_f32(m, vabsq_f32(*vj));
            }
            let db = vmaxvq_f32(m) / 127.0;
            let id = if db > 0.0 { 1.0 / db } else { 0.0 };
            let qi: [int32x4_t; 8] =
                core::array::from_fn(|j| vcvtnq_s32_f32(vmulq_n_f32(v[j], id)));
            let out = q.as_mut_ptr().add(b * BLOCK);
            for h in 0..2 {
                let lo = vcombine_s16(vqmovn_s32(qi[4 * h]), vqmovn_s32(qi[4 * h + 1]));
                let hi = vcombine_s16(vqmovn_s32(qi[4 * h + 2]), vqmovn_s32(qi[4 * h + 3]));
                vst1q_s8(out.add(16 * h), vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
            }
            // Lane `l` of `c[h]`: the sum of values `4 (4h + l) .. 4 (4h + l) + 4`.
            let c: [int32x4_t; 2] = core::array::from_fn(|h| {
                vpaddq_s32(
                    vpaddq_s32(qi[4 * h], qi[4 * h + 1]),
                    vpaddq_s32(qi[4 * h + 2], qi[4 * h + 3]),
                )
            });
            let sum = vaddvq_s32(vaddq_s32(c[0], c[1]));
            *d.get_unchecked_mut(b) = db;
            *s.get_unchecked_mut(b) = db * sum as f32;
            let co = corr.as_mut_ptr().add(b * 8);
            vst1q_s32(co, vmulq_n_s32(c[0], -128));
            vst1q_s32(co.add(4), vmulq_n_s32(c[1], -128));
        }
    }
}
