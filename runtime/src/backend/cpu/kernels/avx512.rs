//! AVX-512F kernels (16 f32 lanes).
//!
//! Every tile function computes `R` weight rows against `N` activation rows over the
//! whole row length and reduces its accumulators at the end; with fewer than 8 (row,
//! activation) pairs it keeps two accumulators per pair so the FMA latency chains stay
//! short (see [`split`]). The `drive` loop feeds it full tiles only. Scales (and int4
//! minimums) are converted 16 at a time with `vcvtph2ps` into cache-line-aligned stack
//! arrays and broadcast from there per block. Tile sizes (measured on a Zen 4 VM):
//! matvec 8 rows (int4) or 4 rows (int8, f32, f16; 8 rows of int8 thrashed the
//! prefetching from DRAM); matmul 2 rows x 8 activations, a remainder of up to 4
//! activations in 2 x 4 tiles.
//!
//! int4: for each block and weight row, `lut = d * [0, 1, .., 15] + m` is one FMA, and the
//! 32 weights are `vpermps(nibbles, lut)`: `vpermps` only reads the low 4 bits of each
//! index, so the low nibbles need no mask and the high ones just a shift. That replaces
//! "mask, convert to f32, FMA" per 16 weights with one lookup, and the dequantized block
//! (two registers) is then reused for all `N` activation rows of the tile.

use core::arch::x86_64::*;
use core::ops::Range;

use glint_format::{BLOCK, DType, Matrix};

use super::{Aligned, NextTile, Out, drive, prefetch};

/// Weight rows per tile for a single activation row (matvec), int4.
const MV_ROWS_Q4: usize = 8;
/// Weight rows per tile for a single activation row (matvec), int8.
const MV_ROWS_Q8: usize = 4;
/// Weight rows per tile for a single activation row (matvec), f32 and f16.
const MV_ROWS_FLOAT: usize = 4;
/// Weight rows per tile for several activation rows (matmul).
const MM_ROWS: usize = 2;
/// Activation rows per tile (matmul).
const MM_ACTS: usize = 8;
/// Activation rows per tile for a remainder of at most this many rows (matmul).
const MM_REST: usize = 4;

/// Whether a tile keeps a second accumulator set: with fewer than 8 (row, activation)
/// pairs one FMA chain per pair would be latency-bound; with more, a second set would
/// spill registers.
const fn split(r: usize, n: usize) -> bool {
    r * n < 8
}

/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; `super::check(w, x, n, &rows)`
/// must have passed; `out` must be writable at every `(i, r)`, `i < n`, `r` in `rows`.
pub(super) unsafe fn run(w: &Matrix<'_>, x: &[f32], n: usize, rows: Range<usize>, out: Out) {
    macro_rules! go {
        ($mv:expr, $tile:ident $(, $extra:expr)?) => {
            if n == 1 {
                // SAFETY: the tiles get in-range rows and activation pointers from `drive`
                // and the planes were validated by `check`; CPU support is our contract.
                unsafe {
                    drive::<{ $mv }, 1, 1>(
                        x,
                        w.cols,
                        n,
                        rows,
                        out,
                        |r, xs| $tile::<{ $mv }, 1>(w, r, xs $(, $extra)?),
                        |r, xs| $tile::<{ $mv }, 1>(w, r, xs $(, $extra)?),
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
                        |r, xs| $tile::<MM_ROWS, MM_ACTS>(w, r, xs $(, $extra)?),
                        |r, xs| $tile::<MM_ROWS, MM_REST>(w, r, xs $(, $extra)?),
                    )
                }
            }
        };
    }
    match w.dtype {
        DType::F32 => go!(MV_ROWS_FLOAT, float_tile, false),
        DType::F16 => go!(MV_ROWS_FLOAT, float_tile, true),
        DType::Q8G32 => go!(MV_ROWS_Q8, q8_tile),
        DType::Q4G32A | DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => go!(MV_ROWS_Q4, q4_tile),
    }
}

/// Loads the `count` (1..=16) little-endian f16 values at byte `at` of `plane` as f32
/// lanes. Reads 16 values straight from the plane when they are there (lanes past
/// `count` are then garbage, and never used), else goes through a zero-padded copy.
///
/// # Safety
/// `plane[at..at + 2 * count]` must be in bounds.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(plane: &[u8], at: usize, count: usize) -> __m512 {
    if at + 32 <= plane.len() {
        // SAFETY: 32 bytes in bounds, checked just above; unaligned load.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(plane.as_ptr().add(at).cast()) })
    } else {
        let mut buf = [0u16; 16];
        // SAFETY: `count <= 16` elements fit `buf`, and are in the plane, by the caller.
        unsafe {
            core::ptr::copy_nonoverlapping(
                plane.as_ptr().add(at),
                buf.as_mut_ptr().cast::<u8>(),
                2 * count,
            )
        };
        // SAFETY: `buf` is 32 bytes.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(buf.as_ptr().cast()) })
    }
}

/// Sum of the two accumulator sets.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
fn reduce<const R: usize, const N: usize>(
    a: &[[__m512; N]; R],
    b: &[[__m512; N]; R],
) -> [[f32; N]; R] {
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = _mm512_reduce_add_ps(_mm512_add_ps(a[k][i], b[k][i]));
        }
    }
    res
}

/// int4 (any group, with or without minimums) tile.
///
/// # Safety
/// As for [`run`]; `rows` are valid row indices and every `xs[i]` has `w.cols` elements.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn q4_tile<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let group = w.dtype.group().unwrap_or(BLOCK);
    let asym = w.dtype == DType::Q4G32A;
    // Scale lane `b` of a chunk of 16 blocks is scale `b >> shift` of the chunk.
    let shift = (group / BLOCK).trailing_zeros() as i32;
    let expand = _mm512_srlv_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(shift),
    );
    let iota = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    let mut acc0 = [[_mm512_setzero_ps(); N]; R];
    let mut acc1 = acc0;
    let next = NextTile::new(w, rows[R - 1], R);
    let mut ds = [Aligned([0f32; 16]); R];
    let mut ms = [Aligned([0f32; 16]); R];
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(16);
        for k in 0..R {
            // Block index in the whole matrix; chunks start at multiples of 512 elements,
            // so at a group boundary for every group size.
            let first = rows[k] * nb + b0;
            // SAFETY: scales `first * 32 / group ..` for `cnt * 32 / group` groups (exact:
            // the row length is a multiple of the group) lie within the row, hence the
            // validated plane; likewise `cnt` minimums.
            let (d, m) = unsafe {
                let d = load_f16(w.scales, 2 * (first * BLOCK / group), cnt * BLOCK / group);
                let d = if shift == 0 {
                    d
                } else {
                    _mm512_permutexvar_ps(expand, d)
                };
                let m = if asym {
                    load_f16(w.mins, 2 * first, cnt)
                } else {
                    _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
                };
                (d, m)
            };
            // SAFETY: 16 f32 fit each stack array.
            unsafe {
                _mm512_storeu_ps(ds[k].0.as_mut_ptr(), d);
                _mm512_storeu_ps(ms[k].0.as_mut_ptr(), m);
            }
        }
        for b in 0..cnt {
            let blk = b0 + b;
            if N == 1 {
                next.block(blk);
            }
            let mut lo = [_mm512_setzero_ps(); R];
            let mut hi = [_mm512_setzero_ps(); R];
            for k in 0..R {
                // SAFETY: block `blk < nb` of row `rows[k]` is 16 bytes inside the values
                // plane (validated by `check`).
                let q = unsafe {
                    let p = w
                        .values
                        .as_ptr()
                        .add(rows[k] * cols / 2 + blk * (BLOCK / 2));
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))
                };
                let lut =
                    _mm512_fmadd_ps(iota, _mm512_set1_ps(ds[k].0[b]), _mm512_set1_ps(ms[k].0[b]));
                lo[k] = _mm512_permutexvar_ps(q, lut);
                hi[k] = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), lut);
            }
            for i in 0..N {
                // SAFETY: `blk * 32 + 32 <= cols` elements of activation row `i`.
                let (x0, x1) = unsafe {
                    let p = xs[i].add(blk * BLOCK);
                    (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                };
                for k in 0..R {
                    acc0[k][i] = _mm512_fmadd_ps(lo[k], x0, acc0[k][i]);
                    let a1 = if split(R, N) {
                        &mut acc1[k][i]
                    } else {
                        &mut acc0[k][i]
                    };
                    *a1 = _mm512_fmadd_ps(hi[k], x1, *a1);
                }
            }
        }
        b0 += cnt;
    }
    reduce(&acc0, &acc1)
}

/// int8 (group 32) tile.
///
/// # Safety
/// As for [`q4_tile`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn q8_tile<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let mut acc0 = [[_mm512_setzero_ps(); N]; R];
    let mut acc1 = acc0;
    let next = NextTile::new(w, rows[R - 1], R);
    let mut ds = [Aligned([0f32; 16]); R];
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(16);
        for k in 0..R {
            // SAFETY: `cnt` scales of row `rows[k]` from block `b0` lie in the plane; 16
            // f32 fit `ds[k]`.
            unsafe {
                let d = load_f16(w.scales, 2 * (rows[k] * nb + b0), cnt);
                _mm512_storeu_ps(ds[k].0.as_mut_ptr(), d);
            }
        }
        for b in 0..cnt {
            let blk = b0 + b;
            if N == 1 {
                next.block(blk);
            }
            // Widened int8 weights of the block, per row.
            let mut q0 = [_mm512_setzero_ps(); R];
            let mut q1 = [_mm512_setzero_ps(); R];
            for k in 0..R {
                // SAFETY: the 32 bytes of block `blk` of row `rows[k]` lie in the plane.
                unsafe {
                    let p = w.values.as_ptr().add(rows[k] * cols + blk * BLOCK);
                    q0[k] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())));
                    q1[k] =
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16).cast())));
                }
            }
            if N == 1 {
                // One activation row: `d * sum(q x)`, one scale multiply per block.
                // SAFETY: 32 elements of the activation row at `blk * 32`.
                let (x0, x1) = unsafe {
                    let p = xs[0].add(blk * BLOCK);
                    (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                };
                for k in 0..R {
                    let t = _mm512_fmadd_ps(q1[k], x1, _mm512_mul_ps(q0[k], x0));
                    acc0[k][0] = _mm512_fmadd_ps(t, _mm512_set1_ps(ds[k].0[b]), acc0[k][0]);
                }
            } else {
                // Several: scale the weights once and reuse them.
                for k in 0..R {
                    let d = _mm512_set1_ps(ds[k].0[b]);
                    q0[k] = _mm512_mul_ps(q0[k], d);
                    q1[k] = _mm512_mul_ps(q1[k], d);
                }
                for i in 0..N {
                    // SAFETY: 32 elements of activation row `i` at `blk * 32`.
                    let (x0, x1) = unsafe {
                        let p = xs[i].add(blk * BLOCK);
                        (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                    };
                    for k in 0..R {
                        acc0[k][i] = _mm512_fmadd_ps(q0[k], x0, acc0[k][i]);
                        let a1 = if split(R, N) {
                            &mut acc1[k][i]
                        } else {
                            &mut acc0[k][i]
                        };
                        *a1 = _mm512_fmadd_ps(q1[k], x1, *a1);
                    }
                }
            }
        }
        b0 += cnt;
    }
    reduce(&acc0, &acc1)
}

/// Loads 16 weights at `p` (f16 when `HALF`, else f32).
///
/// # Safety
/// `p` must be readable for 16 elements.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn load_w<const HALF: bool>(p: *const u8) -> __m512 {
    // SAFETY: by the caller; unaligned loads.
    unsafe {
        if HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// One 32-column step of [`float_tile`].
///
/// # Safety
/// Every `wp[k]` must be readable for 32 weights and every `xp[i]` for 32 f32.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn float_step<const R: usize, const N: usize, const HALF: bool>(
    wp: &[*const u8; R],
    xp: &[*const f32; N],
    acc0: &mut [[__m512; N]; R],
    acc1: &mut [[__m512; N]; R],
) {
    let esize = if HALF { 2 } else { 4 };
    let mut w0 = [_mm512_setzero_ps(); R];
    let mut w1 = [_mm512_setzero_ps(); R];
    for k in 0..R {
        // SAFETY: 32 weights readable at `wp[k]`, by the caller.
        unsafe {
            w0[k] = load_w::<HALF>(wp[k]);
            w1[k] = load_w::<HALF>(wp[k].add(16 * esize));
        }
    }
    for i in 0..N {
        // SAFETY: 32 f32 readable at `xp[i]`, by the caller.
        let (x0, x1) = unsafe { (_mm512_loadu_ps(xp[i]), _mm512_loadu_ps(xp[i].add(16))) };
        for k in 0..R {
            acc0[k][i] = _mm512_fmadd_ps(w0[k], x0, acc0[k][i]);
            let a1 = if split(R, N) {
                &mut acc1[k][i]
            } else {
                &mut acc0[k][i]
            };
            *a1 = _mm512_fmadd_ps(w1[k], x1, *a1);
        }
    }
}

/// f32 / f16 tile (any column count: the last partial 32 columns go through zero-padded
/// stack copies).
///
/// # Safety
/// As for [`q4_tile`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn float_tile<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
    half: bool,
) -> [[f32; N]; R] {
    if half {
        // SAFETY: forwarded.
        unsafe { float_tile_t::<R, N, true>(w, rows, xs) }
    } else {
        // SAFETY: forwarded.
        unsafe { float_tile_t::<R, N, false>(w, rows, xs) }
    }
}

/// [`float_tile`] for one element type.
///
/// # Safety
/// As for [`q4_tile`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn float_tile_t<const R: usize, const N: usize, const HALF: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    const STEP: usize = 32;
    let cols = w.cols;
    let esize = if HALF { 2 } else { 4 };
    let main = cols / STEP * STEP;
    let mut acc0 = [[_mm512_setzero_ps(); N]; R];
    let mut acc1 = acc0;
    // SAFETY: each row `rows[k]` spans `cols * esize` bytes of the validated plane.
    let wrow: [*const u8; R] =
        core::array::from_fn(|k| unsafe { w.values.as_ptr().add(rows[k] * cols * esize) });
    let mut c = 0;
    while c < main {
        // SAFETY: `c + 32 <= cols` for the weight rows and the activation rows.
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
            // room for 32 f32.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    wrow[k].add(main * esize),
                    wbuf[k].as_mut_ptr(),
                    tail * esize,
                )
            };
        }
        for i in 0..N {
            // SAFETY: the last `tail` activations of row `i`; the buffer holds 32.
            unsafe { core::ptr::copy_nonoverlapping(xs[i].add(main), xbuf[i].as_mut_ptr(), tail) };
        }
        let wp = core::array::from_fn(|k| wbuf[k].as_ptr());
        let xp = core::array::from_fn(|i| xbuf[i].as_ptr());
        // SAFETY: the zero-padded buffers hold 32 elements each.
        unsafe { float_step::<R, N, HALF>(&wp, &xp, &mut acc0, &mut acc1) };
    }
    reduce(&acc0, &acc1)
}

/// The `R` rows' weight scales (and int4 minimums: the stored ones, or `-8 d` when
/// symmetric) for the `cnt <= 16` blocks from `b0`, one block per lane, lanes past
/// `cnt` zeroed: `block_scales!(w, rows, b0, cnt, mins) -> ([__m512; R], [__m512; R])`.
/// A macro so it is always inlined (a `#[target_feature]` function cannot be
/// `#[inline(always)]`, and out of line it cost 17% of decode time).
///
/// Safety: must be used inside `unsafe`, with rows and blocks in range of the
/// validated planes (the scales of whole groups: chunks start at multiples of 512
/// elements).
macro_rules! block_scales {
    ($w:expr, $rows:expr, $b0:expr, $cnt:expr, $mins:expr) => {{
        let (w, rows, b0, cnt): (&Matrix<'_>, &[usize; R], usize, usize) = ($w, $rows, $b0, $cnt);
        let nb = w.cols / BLOCK;
        let group = w.dtype.group().unwrap_or(BLOCK);
        let shift = (group / BLOCK).trailing_zeros();
        let lanes: __mmask16 = if cnt >= 16 { 0xffff } else { (1u16 << cnt) - 1 };
        let mut ds = [_mm512_setzero_ps(); R];
        let mut ms = [_mm512_setzero_ps(); R];
        for k in 0..R {
            let first = rows[k] * nb + b0;
            let d = load_f16(
                w.scales,
                2 * (first * BLOCK / group),
                (cnt * BLOCK).div_ceil(group),
            );
            let d = if shift == 0 {
                d
            } else {
                let expand = _mm512_srlv_epi32(
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                    _mm512_set1_epi32(shift as i32),
                );
                _mm512_permutexvar_ps(expand, d)
            };
            ds[k] = _mm512_maskz_mov_ps(lanes, d);
            if $mins {
                ms[k] = if w.dtype == DType::Q4G32A {
                    _mm512_maskz_mov_ps(lanes, load_f16(w.mins, 2 * first, cnt))
                } else {
                    _mm512_mul_ps(ds[k], _mm512_set1_ps(-8.0))
                };
            }
        }
        (ds, ms)
    }};
}

// ---------------------------------------------------------------------------------------
// int8 activations (AVX-512 VNNI), see `int8.rs`.

/// Weight rows per tile, one activation row (decode), int4 weights. Measured on the
/// whole model's decode (t1, int8, same session, medians of runs): with the row loop
/// in [`mv_range`], 8 rows 172-183 tok/s against 158-163 for 4; (with the tile called
/// per 4 rows through `drive_q` instead, 4 rows had been best: 151-157 vs 143).
const Q_MV_ROWS_Q4: usize = 8;
/// Weight rows per tile, one activation row, int8 weights (the output head); 2 and 8
/// rows measured slower than 4 (8: 154-171 vs 171-180 tok/s, same session).
const Q_MV_ROWS_Q8: usize = 4;
/// Weight rows per tile, several activation rows (prefill).
const Q_MM_ROWS: usize = 4;
/// Activation rows per tile (prefill).
const Q_MM_ACTS: usize = 4;
/// Activation rows per tile for a remainder of at most this many rows.
const Q_MM_REST: usize = 1;

/// # Safety
/// The CPU must support AVX-512F/BW/VL/VNNI, AVX2, FMA and F16C; `int8::check_q` must have
/// passed; `out` must be writable at every `(i, r)`, `i < a.rows()`, `r` in `rows`.
pub(super) unsafe fn run_q8act(
    w: &Matrix<'_>,
    a: &super::int8::QuantActs,
    rows: Range<usize>,
    out: Out,
) {
    use super::int8::drive_q;
    let n = a.rows();
    macro_rules! go {
        ($tile:ident, $mv:ident, $mvr:expr) => {
            if n == 1 {
                // SAFETY: the planes were validated by `check_q`; CPU support is our
                // contract; `out` is writable for activation 0 and every row of `rows`.
                unsafe { mv_range::<{ $mvr }>(w, a, rows, out, |r| $mv::<{ $mvr }>(w, r, a, 0)) }
            } else {
                // SAFETY: as above.
                unsafe {
                    drive_q::<Q_MM_ROWS, Q_MM_ACTS, Q_MM_REST>(
                        n,
                        rows,
                        out,
                        |r, i| $tile::<Q_MM_ROWS, Q_MM_ACTS>(w, r, a, i),
                        |r, i| $tile::<Q_MM_ROWS, Q_MM_REST>(w, r, a, i),
                    )
                }
            }
        };
    }
    if w.dtype == DType::Q8G32 {
        go!(q8_tile_i8, q8_mv_i8, Q_MV_ROWS_Q8)
    } else if n == 1
        && matches!(w.dtype, DType::Q4G32A | DType::Q4G32)
        && w.cols == 576
        && std::arch::is_x86_feature_detected!("gfni")
    {
        let asym = w.dtype == DType::Q4G32A;
        // SAFETY: forwarded from our caller; GFNI checked here; `asym` is the dtype's.
        unsafe {
            if asym {
                q4_mv576_gf::<true>(w, a, rows, out)
            } else {
                q4_mv576_gf::<false>(w, a, rows, out)
            }
        }
    } else if n == 1 && matches!(w.dtype, DType::Q4G32A | DType::Q4G32) {
        // SAFETY: forwarded from our caller; `ASYM` is the dtype's.
        unsafe {
            if w.dtype == DType::Q4G32A {
                q4_mv_wide::<true>(w, a, rows, out)
            } else {
                q4_mv_wide::<false>(w, a, rows, out)
            }
        }
    } else if n >= T_MIN_ACTS && w.cols <= T_MAX_COLS {
        // SAFETY: forwarded from our caller.
        unsafe { q4_tiled(w, a, rows, out) }
    } else {
        go!(q4_tile_i8, q4_mv_i8, Q_MV_ROWS_Q4)
    }
}

/// The matvec row loop: tiles of `R` rows (the last one repeating its last row) through
/// `tile`, all inside one function with the kernels' target features so the tile
/// (`#[inline]`) is inlined and its per-call setup (index vectors, activation
/// pointers) hoisted: with `drive_q` calling the tile per 4 rows of a 576-column
/// matrix, that setup was a large share of each call.
///
/// # Safety
/// `out` must be writable at `(0, r)` for `r` in `rows`; `tile` must be safe to call
/// with in-range rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn mv_range<const R: usize>(
    _w: &Matrix<'_>,
    _a: &super::int8::QuantActs,
    rows: Range<usize>,
    out: Out,
    tile: impl Fn(&[usize; R]) -> [[f32; 1]; R],
) {
    let mut r0 = rows.start;
    while r0 < rows.end {
        let rr = (rows.end - r0).min(R);
        let ridx: [usize; R] = core::array::from_fn(|k| r0 + k.min(rr - 1));
        let res = tile(&ridx).map(|v| v[0]);
        // SAFETY: rows `r0..r0 + rr` lie in `rows`, by the caller.
        unsafe { out.write_run(r0, &res, rr) };
        r0 += R;
    }
}

/// Horizontal sums of `R` vectors. For 4 and 8 a transpose-and-add tree (13 and 23
/// shuffles and adds instead of 4 or 8 separate reductions of ~8 each); else one
/// reduction each.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
pub(super) fn hsum<const R: usize>(acc: &[__m512; R]) -> [f32; R] {
    if R == 4 {
        let l1: [__m512; 2] = core::array::from_fn(|p| {
            let (a, b) = (acc[2 * p], acc[2 * p + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            )
        });
        // 128-bit lane q: 4 partial sums of row q.
        let u = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(l1[0], l1[1]),
            _mm512_shuffle_f32x4::<0xDD>(l1[0], l1[1]),
        );
        let u = _mm512_add_ps(u, _mm512_shuffle_ps::<0x4E>(u, u));
        let u = _mm512_add_ps(u, _mm512_shuffle_ps::<0xB1>(u, u));
        let mut v = [0f32; 16];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), u) };
        return core::array::from_fn(|k| v[4 * k]);
    }
    if R != 8 {
        return core::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]));
    }
    // Level 1: lanes 0..8 = row a's 256-bit halves added, 8..16 = row b's.
    let l1: [__m512; 4] = core::array::from_fn(|p| {
        let (a, b) = (acc[2 * p], acc[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // Level 2: 128-bit lane q holds 4 partial sums of row q (rows 0..4, then 4..8).
    let l2: [__m512; 2] = core::array::from_fn(|p| {
        let (c, d) = (l1[2 * p], l1[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(c, d),
            _mm512_shuffle_f32x4::<0xDD>(c, d),
        )
    });
    // Level 3: lane q = [row q: 2 partials, row 4 + q: 2 partials].
    let l3 = _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(l2[0], l2[1]),
        _mm512_shuffle_ps::<0xEE>(l2[0], l2[1]),
    );
    // Level 4: element 4q = row q, element 4q + 2 = row 4 + q.
    let l4 = _mm512_add_ps(l3, _mm512_shuffle_ps::<0xB1>(l3, l3));
    let mut v = [0f32; 16];
    // SAFETY: 16 floats.
    unsafe { _mm512_storeu_ps(v.as_mut_ptr(), l4) };
    core::array::from_fn(|k| if k < 4 { v[4 * k] } else { v[4 * (k - 4) + 2] })
}

/// Per 4-block chunk `c` of a 16-block group, the `vpermps` indices that spread the
/// scales of blocks `4c .. 4c + 4` over the 16 lanes of the chunk's `vpdpbusd` sums (4
/// lanes per block).
#[target_feature(enable = "avx512f")]
#[inline]
fn block_lanes() -> [__m512i; 4] {
    core::array::from_fn(|c| {
        let b = c as i32 * 4;
        let (b1, b2, b3) = (b + 1, b + 2, b + 3);
        _mm512_setr_epi32(b, b, b, b, b1, b1, b1, b1, b2, b2, b2, b2, b3, b3, b3, b3)
    })
}

/// [`q4_tile_i8`] for one activation row: rows are processed one after the other inside
/// each chunk so only the accumulators and per-row scale vectors stay in registers. A
/// final chunk of 1 or 2 blocks (576 columns are 18 blocks) runs on 256-bit vectors,
/// half the work of a masked 512-bit chunk.
///
/// # Safety
/// As for [`q4_tile_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q4_mv_i8<const R: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &super::int8::QuantActs,
    act: usize,
) -> [[f32; 1]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let (sb, sk) = (a.stride_nib(), a.stride_blk());
    let m4 = _mm512_set1_epi8(0x0f);
    let m4y = _mm256_set1_epi8(0x0f);
    let idx = block_lanes();
    let mut acc = [_mm512_setzero_ps(); R];
    let next = NextTile::new(w, rows[R - 1], R);
    let xn = a.nib[act * sb..].as_ptr();
    let wp: [*const u8; R] = core::array::from_fn(|k| w.values[rows[k] * cols / 2..].as_ptr());
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(16);
        // SAFETY: rows and blocks in range.
        let (ds, ms) = unsafe { block_scales!(w, rows, b0, cnt, true) };
        // SAFETY: the block arrays are padded to a multiple of 16 per row.
        let (dx, sx) = unsafe {
            let at = act * sk + b0;
            (
                _mm512_loadu_ps(a.d.as_ptr().add(at)),
                _mm512_loadu_ps(a.s.as_ptr().add(at)),
            )
        };
        let mut scl = [_mm512_setzero_ps(); R];
        for k in 0..R {
            acc[k] = _mm512_fmadd_ps(ms[k], sx, acc[k]);
            scl[k] = _mm512_mul_ps(ds[k], dx);
        }
        for (c, idx) in idx.iter().enumerate().take(cnt.div_ceil(4)) {
            let blk = b0 + 4 * c;
            let rb = (nb - blk).min(4);
            for j in 0..rb {
                next.block(blk + j);
            }
            if rb <= 2 {
                // SAFETY: the nibble-order row is padded to a multiple of 128 bytes.
                let (xl, xh) = unsafe {
                    let p = xn.add(blk / 4 * 128);
                    (
                        _mm256_loadu_si256(p.cast()),
                        _mm256_loadu_si256(p.add(64).cast()),
                    )
                };
                for k in 0..R {
                    // SAFETY: the `16 * rb` bytes of blocks `blk..blk + rb` of the row.
                    let v = unsafe {
                        let p = wp[k].add(blk * (BLOCK / 2));
                        if rb == 2 {
                            _mm256_loadu_si256(p.cast())
                        } else {
                            _mm256_zextsi128_si256(_mm_loadu_si128(p.cast()))
                        }
                    };
                    let lo = _mm256_and_si256(v, m4y);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4y);
                    let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xl);
                    let p = _mm256_dpbusd_epi32(p, hi, xh);
                    let s = _mm512_castps512_ps256(_mm512_permutexvar_ps(*idx, scl[k]));
                    let t = _mm256_mul_ps(_mm256_cvtepi32_ps(p), s);
                    acc[k] = _mm512_add_ps(acc[k], _mm512_zextps256_ps512(t));
                }
                continue;
            }
            let mask: __mmask64 = if rb == 4 { !0 } else { (1u64 << (16 * rb)) - 1 };
            // SAFETY: the nibble-order row is padded to a multiple of 128 bytes.
            let (xl, xh) = unsafe {
                let p = xn.add(blk / 4 * 128);
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(64).cast()),
                )
            };
            for k in 0..R {
                // SAFETY: the `16 * rb` bytes of blocks `blk..blk + rb` of the row are in
                // the plane; masked-off bytes are not accessed.
                let v =
                    unsafe { _mm512_maskz_loadu_epi8(mask, wp[k].add(blk * (BLOCK / 2)).cast()) };
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl);
                let p = _mm512_dpbusd_epi32(p, hi, xh);
                acc[k] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(p),
                    _mm512_permutexvar_ps(*idx, scl[k]),
                    acc[k],
                );
            }
        }
        b0 += cnt;
    }
    let sums = hsum(&acc);
    core::array::from_fn(|k| [sums[k]])
}

/// [`q4_mv_i8`] specialised for 576-column `Q4G32A` (`ASYM`) or `Q4G32` rows (18 blocks: 4 full 4-block
/// chunks and a 2-block tail), the shape of q, k, v, o, gate and up (75% of the int4
/// bytes of a decode step). The whole row range runs in this one function so the
/// quantized activation row (8 zmm + 2 ymm), its scales and the lane-index vectors are
/// loaded once per matrix instead of once per tile; each row's 16 + 2 weight scales
/// and minimums are two fixed-size loads each (no masks, no count); the high nibbles
/// are one GFNI affine byte shift (`vgf2p8affineqb`) instead of a shift and a mask; the
/// values of the tile after next are prefetched row by row (two tiles ahead: +4%
/// median of 8 interleaved whole-model rounds against one tile ahead, noisy machine).
/// Measured t1 int8 decode: 164 -> 178 tok/s (medians of 6 interleaved rounds, noisy).
///
/// # Safety
/// As for [`run_q8act`] with one activation row, `w.dtype` `Q4G32A` if `ASYM` else
/// `Q4G32`, `w.cols == 576`, and the CPU must also support GFNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c,gfni")]
unsafe fn q4_mv576_gf<const ASYM: bool>(
    w: &Matrix<'_>,
    a: &super::int8::QuantActs,
    rows: Range<usize>,
    out: Out,
) {
    const R: usize = Q_MV_ROWS_Q4;
    const NB: usize = 18;
    const ROW: usize = NB * BLOCK / 2;
    debug_assert!(
        w.cols == NB * BLOCK && w.dtype == if ASYM { DType::Q4G32A } else { DType::Q4G32 }
    );
    let minus8 = _mm512_set1_ps(-8.0);
    let m4 = _mm512_set1_epi8(0x0f);
    let m4y = _mm256_set1_epi8(0x0f);
    // Output bit i = input bit i + 4 (i < 4), else 0: a per-byte logical shift by 4.
    let shr4 = _mm512_set1_epi64(0x1020_4080_0000_0000);
    let shr4y = _mm256_set1_epi64x(0x1020_4080_0000_0000);
    let idx = block_lanes();
    let idx_t = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    // Activation row 0. SAFETY: the nibble-order row is padded to a multiple of 128
    // bytes (640 here); the block arrays to a multiple of 16 per row (32 here).
    let (xl, xh, xlt, xht, dx, sx, dxt, sxt) = unsafe {
        let xn = a.nib.as_ptr();
        let xl: [__m512i; 4] = core::array::from_fn(|c| _mm512_loadu_si512(xn.add(c * 128).cast()));
        let xh: [__m512i; 4] =
            core::array::from_fn(|c| _mm512_loadu_si512(xn.add(c * 128 + 64).cast()));
        let xlt = _mm256_loadu_si256(xn.add(512).cast());
        let xht = _mm256_loadu_si256(xn.add(576).cast());
        let d = a.d.as_ptr();
        let s = a.s.as_ptr();
        (
            xl,
            xh,
            xlt,
            xht,
            _mm512_loadu_ps(d),
            _mm512_loadu_ps(s),
            _mm_loadu_ps(d.add(16)),
            _mm_loadu_ps(s.add(16)),
        )
    };
    let vals = w.values.as_ptr();
    let scales = w.scales.as_ptr();
    let mins = w.mins.as_ptr();
    let mut r0 = rows.start;
    while r0 < rows.end {
        let rr = (rows.end - r0).min(R);
        // Prefetches the next tile's scales and minimums; values go row by row below.
        let _ = NextTile::new(w, r0 + R - 1, R);
        let pf = vals.wrapping_add((r0 + 2 * R) * ROW);
        let mut acc = [_mm512_setzero_ps(); R];
        for (k, acc) in acc.iter_mut().enumerate() {
            let r = r0 + k.min(rr - 1);
            for j in 0..5 {
                prefetch(pf.wrapping_add(k * ROW + 64 * j));
            }
            // SAFETY: row `r` is in the matrix (validated planes): 18 f16 scales and
            // minimums at `2 * 18 * r`, 288 value bytes at `288 * r`.
            // Symmetric rows have no minimum plane: their minimum is `-8 d`.
            let (ds, ms, dt, mt, wp) = unsafe {
                let sp = scales.add(2 * NB * r);
                let ds = _mm512_cvtph_ps(_mm256_loadu_si256(sp.cast()));
                let dt = _mm_cvtph_ps(_mm_cvtsi32_si128(sp.add(32).cast::<i32>().read_unaligned()));
                let (ms, mt) = if ASYM {
                    let mp = mins.add(2 * NB * r);
                    (
                        _mm512_cvtph_ps(_mm256_loadu_si256(mp.cast())),
                        _mm_cvtph_ps(_mm_cvtsi32_si128(mp.add(32).cast::<i32>().read_unaligned())),
                    )
                } else {
                    (
                        _mm512_mul_ps(ds, minus8),
                        _mm_mul_ps(dt, _mm512_castps512_ps128(minus8)),
                    )
                };
                (ds, ms, dt, mt, vals.add(ROW * r))
            };
            let scl = _mm512_mul_ps(ds, dx);
            let mut s = _mm512_mul_ps(ms, sx);
            for c in 0..4 {
                // SAFETY: bytes `64 c .. 64 c + 64` of the row's 288.
                let v = unsafe { _mm512_loadu_si512(wp.add(64 * c).cast()) };
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_gf2p8affine_epi64_epi8::<0>(v, shr4);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl[c]);
                let p = _mm512_dpbusd_epi32(p, hi, xh[c]);
                s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx[c], scl), s);
            }
            // Tail: blocks 16 and 17 on 256-bit vectors.
            // SAFETY: bytes 256..288 of the row.
            let v = unsafe { _mm256_loadu_si256(wp.add(256).cast()) };
            let lo = _mm256_and_si256(v, m4y);
            let hi = _mm256_gf2p8affine_epi64_epi8::<0>(v, shr4y);
            let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xlt);
            let p = _mm256_dpbusd_epi32(p, hi, xht);
            let sclt = _mm256_castps128_ps256(_mm_mul_ps(dt, dxt));
            let mt = _mm256_zextps128_ps256(_mm_mul_ps(mt, sxt));
            let t = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_permutevar8x32_ps(sclt, idx_t),
                mt,
            );
            *acc = _mm512_add_ps(s, _mm512_zextps256_ps512(t));
        }
        // SAFETY: rows `r0..r0 + rr` lie in `rows`, by the caller.
        unsafe { out.write_run(r0, &hsum(&acc), rr) };
        r0 += R;
    }
}

/// Rows per tile of [`q4_mv_wide`]; 4 measured no better in the whole model.
const Q_MV_WIDE_ROWS: usize = 8;
/// How many tiles ahead [`q4_mv_wide`] prefetches values.
const Q_MV_WIDE_PF_TILES: usize = 1;

/// [`q4_mv_i8`] specialised for `Q4G32A` (`ASYM`) or `Q4G32` rows of any whole number of
/// blocks: SmolLM2's 1536-column ffn_down (17% of the int4 bytes of a decode step), every
/// matrix of Llama-3.x-style models (2048, 8192 columns), and the widths that are not
/// multiples of 512 (SmolLM2-360M's 960 and 2560, Qwen2.5-0.5B's 896 and 4864: a last
/// group of fewer than 16 blocks takes masked scale loads, a last chunk of 1-3 blocks a
/// masked or 256-bit value load). The activation row
/// does not fit in registers, so it streams from L1: each 4-block chunk of activations
/// (low and high nibble halves) is loaded once and used by the `R` rows of the tile, each
/// with its own accumulator. Per 16 blocks each row's scales and minimums are one
/// 32-byte f16 load each (no masks, no counts). The next tile's values are prefetched in
/// address order, `R` lines per chunk (a row-strided order, line `c` of each row per
/// chunk, was slower in the whole model although equal in cache).
///
/// The high nibbles use a shift and a mask, not GFNI as in [`q4_mv576_gf`]: with
/// `vgf2p8affineqb` the whole model was slower (median 176 vs 181 tok/s, 5 interleaved
/// rounds), though equal in cache (Zen 4: it competes with `vpdpbusd` for the same
/// pipes). Measured (throughput test, in cache): 576x1536 16.3 -> 10.9 us against the
/// generic tile kernel; 2048x2048 and 2048x8192 see benches/README.md.
///
/// # Safety
/// As for [`run_q8act`] with one activation row, `w.dtype` `Q4G32A` if `ASYM` else
/// `Q4G32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_mv_wide<const ASYM: bool>(
    w: &Matrix<'_>,
    a: &super::int8::QuantActs,
    rows: Range<usize>,
    out: Out,
) {
    const R: usize = Q_MV_WIDE_ROWS;
    let nb = w.cols / BLOCK;
    let row = nb * BLOCK / 2;
    debug_assert!(w.dtype == if ASYM { DType::Q4G32A } else { DType::Q4G32 });
    let minus8 = _mm512_set1_ps(-8.0);
    let m4 = _mm512_set1_epi8(0x0f);
    let idx = block_lanes();
    let xn = a.nib.as_ptr();
    let (xd, xs) = (a.d.as_ptr(), a.s.as_ptr());
    let vals = w.values.as_ptr();
    let scales = w.scales.as_ptr();
    let mins = w.mins.as_ptr();
    let m4y = _mm256_set1_epi8(0x0f);
    let mut r0 = rows.start;
    while r0 < rows.end {
        let rr = (rows.end - r0).min(R);
        let r: [usize; R] = core::array::from_fn(|k| r0 + k.min(rr - 1));
        // Prefetches the next tile's scales and minimums; values go line by line below.
        let _ = NextTile::new(w, r0 + R - 1, R);
        let pf = vals.wrapping_add((r0 + Q_MV_WIDE_PF_TILES * R) * row);
        let mut acc = [_mm512_setzero_ps(); R];
        for g in 0..nb.div_ceil(16) {
            // Blocks of this group: 16, except in the last group of a row that is not a
            // whole number of groups (896 columns: 16 + 12; 960: 16 + 14; 4864: 9 x 16 + 8).
            let cnt = (nb - 16 * g).min(16);
            let sm: __mmask16 = if cnt == 16 { !0 } else { (1 << cnt) - 1 };
            // SAFETY: activation row 0: the block arrays are padded to a multiple of 16
            // (zero past `nb`); rows `r` are in the matrix (validated planes): `nb` f16
            // scales and minimums at `2 nb r`, of which the mask reads the group's `cnt`.
            let (dx, sx) = unsafe {
                (
                    _mm512_loadu_ps(xd.add(16 * g)),
                    _mm512_loadu_ps(xs.add(16 * g)),
                )
            };
            let mut scl = [_mm512_setzero_ps(); R];
            for k in 0..R {
                // SAFETY: as above.
                let (ds, ms) = unsafe {
                    let o = 2 * nb * r[k] + 32 * g;
                    let ds = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(sm, scales.add(o).cast()));
                    // Symmetric rows have no minimum plane: their minimum is `-8 d`.
                    let ms = if ASYM {
                        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(sm, mins.add(o).cast()))
                    } else {
                        _mm512_mul_ps(ds, minus8)
                    };
                    (ds, ms)
                };
                scl[k] = _mm512_mul_ps(ds, dx);
                acc[k] = _mm512_fmadd_ps(ms, sx, acc[k]);
            }
            for (c, idx) in idx.iter().enumerate().take(cnt.div_ceil(4)) {
                let ch = 4 * g + c;
                // Blocks in this chunk: 4, or 1-3 at the end of a row.
                let rb = (cnt - 4 * c).min(4);
                // SAFETY: the nibble-order row holds `nb / 4` chunks of 128 bytes, padded
                // to a whole last chunk.
                let (xl, xh) = unsafe {
                    let p = xn.add(ch * 128);
                    (
                        _mm512_loadu_si512(p.cast()),
                        _mm512_loadu_si512(p.add(64).cast()),
                    )
                };
                if rb <= 2 {
                    // 1 or 2 blocks on 256-bit vectors (as in `q4_mv_i8`).
                    let (xl, xh) = (_mm512_castsi512_si256(xl), _mm512_castsi512_si256(xh));
                    for k in 0..R {
                        prefetch(pf.wrapping_add(ch * (64 * R) + 64 * k));
                        // SAFETY: the `16 rb` bytes of the chunk's blocks in row `r[k]`.
                        let v = unsafe {
                            let p = vals.add(row * r[k] + 64 * ch);
                            if rb == 2 {
                                _mm256_loadu_si256(p.cast())
                            } else {
                                _mm256_zextsi128_si256(_mm_loadu_si128(p.cast()))
                            }
                        };
                        let lo = _mm256_and_si256(v, m4y);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4y);
                        let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, xl);
                        let p = _mm256_dpbusd_epi32(p, hi, xh);
                        let sc = _mm512_castps512_ps256(_mm512_permutexvar_ps(*idx, scl[k]));
                        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(p), sc);
                        acc[k] = _mm512_add_ps(acc[k], _mm512_zextps256_ps512(t));
                    }
                    continue;
                }
                let vm: __mmask64 = if rb == 4 { !0 } else { (1 << (16 * rb)) - 1 };
                for k in 0..R {
                    // The next tile in address order: `R row / (nb / 4)` = `64 R` bytes
                    // per chunk, one line per row of the tile.
                    prefetch(pf.wrapping_add(ch * (64 * R) + 64 * k));
                    // SAFETY: bytes `64 ch .. 64 ch + 16 rb` of row `r[k]`'s `row`;
                    // masked-off bytes are not accessed.
                    let v = unsafe {
                        let p = vals.add(row * r[k] + 64 * ch);
                        if rb == 4 {
                            _mm512_loadu_si512(p.cast())
                        } else {
                            _mm512_maskz_loadu_epi8(vm, p.cast())
                        }
                    };
                    let lo = _mm512_and_si512(v, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl);
                    let p = _mm512_dpbusd_epi32(p, hi, xh);
                    acc[k] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(p),
                        _mm512_permutexvar_ps(*idx, scl[k]),
                        acc[k],
                    );
                }
            }
        }
        // SAFETY: rows `r0..r0 + rr` lie in `rows`, by the caller.
        unsafe { out.write_run(r0, &hsum(&acc), rr) };
        r0 += R;
    }
}

/// [`q8_tile_i8`] for one activation row, rows one after the other per chunk.
///
/// # Safety
/// As for [`q4_tile_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q8_mv_i8<const R: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &super::int8::QuantActs,
    act: usize,
) -> [[f32; 1]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let (sn, sk) = (a.stride_nat(), a.stride_blk());
    let bias = _mm512_set1_epi8(-128);
    let idx: [__m512i; 8] = core::array::from_fn(|c| {
        let (b, e) = (2 * c as i32, 2 * c as i32 + 1);
        _mm512_setr_epi32(b, b, b, b, b, b, b, b, e, e, e, e, e, e, e, e)
    });
    let mut acc = [_mm512_setzero_ps(); R];
    let next = NextTile::new(w, rows[R - 1], R);
    let xq = a.nat[act * sn..].as_ptr();
    let xc = a.corr[act * sn / 4..].as_ptr();
    let wp: [*const u8; R] = core::array::from_fn(|k| w.values[rows[k] * cols..].as_ptr());
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(16);
        // SAFETY: rows and blocks in range.
        let (ds, _) = unsafe { block_scales!(w, rows, b0, cnt, false) };
        // SAFETY: the block arrays are padded to a multiple of 16 per row.
        let dx = unsafe { _mm512_loadu_ps(a.d.as_ptr().add(act * sk + b0)) };
        let scl: [__m512; R] = core::array::from_fn(|k| _mm512_mul_ps(ds[k], dx));
        for (c, idx) in idx.iter().enumerate().take(cnt.div_ceil(2)) {
            let blk = b0 + 2 * c;
            let rb = (nb - blk).min(2);
            for j in 0..rb {
                next.block(blk + j);
            }
            let mask: __mmask64 = if rb == 2 { !0 } else { (1u64 << 32) - 1 };
            // SAFETY: natural-order rows and their corrections are padded to 64 values.
            let (x, corr) = unsafe {
                (
                    _mm512_loadu_si512(xq.add(blk * BLOCK).cast()),
                    _mm512_loadu_si512(xc.add(blk * BLOCK / 4).cast()),
                )
            };
            for k in 0..R {
                // SAFETY: the `32 * rb` bytes of blocks `blk..blk + rb` are in the plane;
                // masked-off bytes are not accessed.
                let q = unsafe {
                    _mm512_xor_si512(
                        _mm512_maskz_loadu_epi8(mask, wp[k].add(blk * BLOCK).cast()),
                        bias,
                    )
                };
                let p = _mm512_dpbusd_epi32(corr, q, x);
                acc[k] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(p),
                    _mm512_permutexvar_ps(*idx, scl[k]),
                    acc[k],
                );
            }
        }
        b0 += cnt;
    }
    let sums = hsum(&acc);
    core::array::from_fn(|k| [sums[k]])
}

/// int4 weights x int8 activations tile: per 4-block chunk one 64-byte load of nibbles
/// per row, unpacked once (low and high nibbles) and reused for every activation row;
/// two `vpdpbusd` per (row, activation), one convert and one FMA with the per-lane scale
/// `dw dx`; the minimum term `m s` once per 16 blocks.
///
/// Register budget (32 zmm): `R N` accumulators + `2 R` unpacked weights + 3 activation
/// vectors + 2 temporaries; the per-row scales of the chunk live in a stack array read
/// with volatile loads (one per (row, activation)) so they never compete for registers:
/// with them in registers the 4 x 4 tile spilled accumulators (0.46 GB/s at 64 rows).
///
/// # Safety
/// As for [`run_q8act`]; `rows` valid, `acts` `< a.rows()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_tile_i8<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &super::int8::QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let (sb, sk) = (a.stride_nib(), a.stride_blk());
    let m4 = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let xn: [*const i8; N] = core::array::from_fn(|i| a.nib[acts[i] * sb..].as_ptr());
    let d4: [*const f32; N] = core::array::from_fn(|i| a.d4[acts[i] * (sb / 8)..].as_ptr());
    let wp: [*const u8; R] = core::array::from_fn(|k| w.values[rows[k] * cols / 2..].as_ptr());
    let mut dsa = Aligned([[0f32; 16]; R]);
    let mut dwc = Aligned([[0f32; 16]; R]);
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(16);
        // SAFETY: rows and blocks in range.
        let (ds, ms) = unsafe { block_scales!(w, rows, b0, cnt, true) };
        for i in 0..N {
            // SAFETY: the block arrays are padded to a multiple of 16 per row.
            let sx = unsafe { _mm512_loadu_ps(a.s.as_ptr().add(acts[i] * sk + b0)) };
            for k in 0..R {
                acc[k][i] = _mm512_fmadd_ps(ms[k], sx, acc[k][i]);
            }
        }
        for (d, v) in dsa.0.iter_mut().zip(ds) {
            // SAFETY: 64-byte aligned stack array.
            unsafe { _mm512_store_ps(d.as_mut_ptr(), v) };
        }
        for c in 0..cnt.div_ceil(4) {
            let blk = b0 + 4 * c;
            let rb = (nb - blk).min(4);
            let mask: __mmask64 = if rb == 4 { !0 } else { (1u64 << (16 * rb)) - 1 };
            let cc = 4 * c as i32;
            let idx = _mm512_setr_epi32(
                cc,
                cc,
                cc,
                cc,
                cc + 1,
                cc + 1,
                cc + 1,
                cc + 1,
                cc + 2,
                cc + 2,
                cc + 2,
                cc + 2,
                cc + 3,
                cc + 3,
                cc + 3,
                cc + 3,
            );
            for k in 0..R {
                // SAFETY: aligned stack arrays.
                unsafe {
                    let d = _mm512_load_ps(dsa.0[k].as_ptr());
                    _mm512_store_ps(dwc.0[k].as_mut_ptr(), _mm512_permutexvar_ps(idx, d));
                }
            }
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for k in 0..R {
                // SAFETY: the `16 * rb` bytes of blocks `blk..blk + rb` of the row are in
                // the plane; masked-off bytes are not accessed.
                let v =
                    unsafe { _mm512_maskz_loadu_epi8(mask, wp[k].add(blk * (BLOCK / 2)).cast()) };
                lo[k] = _mm512_and_si512(v, m4);
                hi[k] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
            }
            for i in 0..N {
                // SAFETY: the nibble-order row is padded to a multiple of 128 bytes and
                // its `d4` row to a multiple of 16 lanes (4 blocks).
                let (xl, xh, dx) = unsafe {
                    let p = xn[i].add(blk / 4 * 128);
                    (
                        _mm512_loadu_si512(p.cast()),
                        _mm512_loadu_si512(p.add(64).cast()),
                        _mm512_loadu_ps(d4[i].add(blk * 4)),
                    )
                };
                for k in 0..R {
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[k], xl);
                    let p = _mm512_dpbusd_epi32(p, hi[k], xh);
                    // SAFETY: aligned stack array; volatile keeps it out of registers.
                    let dw =
                        unsafe { core::ptr::read_volatile(dwc.0[k].as_ptr().cast::<__m512>()) };
                    acc[k][i] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw, dx), acc[k][i]);
                }
            }
        }
        b0 += cnt;
    }
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = _mm512_reduce_add_ps(acc[k][i]);
        }
    }
    res
}

/// Weight rows per tile of [`q4_tiled`].
const T_ROWS: usize = 8;
/// Longest row [`q4_tiled`] takes (its unpacked weight tile lives on the stack).
const T_MAX_COLS: usize = 4096;
/// Fewest activation rows for [`q4_tiled`] (it pads them to a multiple of 16).
const T_MIN_ACTS: usize = 12;

/// Multi-row int4 x int8 kernel over the tile-order activations of [`QuantActs`]
/// (`super::int8::TILE` = 16 rows per zmm): for each tile of [`T_ROWS`] weight rows the
/// nibbles are unpacked once into bytes (and the block scales and minimums into f32) on
/// the stack, then every 16-activation tile runs against them: per block, 8
/// `vpdpbusd` per weight row (4 broadcast weights x one 64-byte load of 16 rows' 4
/// values), so each lane holds one (weight row, activation row) block sum and the
/// scaling (`cvt`, `dw dx` product, two FMAs) happens once per block for 16 pairs,
/// instead of once per 4-block chunk per pair in [`q4_tile_i8`]. Accumulators: 8
/// integer + 8 float zmm.
///
/// # Safety
/// As for [`run_q8act`]; `a.rows() > 1` (tile order filled), `w.cols <= T_MAX_COLS`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q4_tiled(w: &Matrix<'_>, a: &super::int8::QuantActs, rows: Range<usize>, out: Out) {
    use super::int8::TILE;
    const R: usize = T_ROWS;
    let (cols, n) = (w.cols, a.rows());
    let nb = cols / BLOCK;
    let group = w.dtype.group().unwrap_or(BLOCK);
    let mut wu = Aligned([[0u8; T_MAX_COLS]; R]);
    let mut dw = Aligned([[0f32; T_MAX_COLS / BLOCK]; R]);
    let mut mw = Aligned([[0f32; T_MAX_COLS / BLOCK]; R]);
    let f16 = |plane: &[u8], i: usize| {
        half::f16::from_le_bytes([plane[2 * i], plane[2 * i + 1]]).to_f32()
    };
    let m4 = _mm_set1_epi8(0x0f);
    let mut r0 = rows.start;
    while r0 < rows.end {
        let rr = (rows.end - r0).min(R);
        for k in 0..R {
            let r = r0 + k.min(rr - 1);
            let src = &w.values[r * cols / 2..(r + 1) * cols / 2];
            for b in 0..nb {
                // SAFETY: 16 bytes of block `b` of the row, 32 bytes of the stack row.
                unsafe {
                    let v = _mm_loadu_si128(src.as_ptr().add(16 * b).cast());
                    let dst = wu.0[k].as_mut_ptr().add(32 * b);
                    _mm_storeu_si128(dst.cast(), _mm_and_si128(v, m4));
                    _mm_storeu_si128(
                        dst.add(16).cast(),
                        _mm_and_si128(_mm_srli_epi16::<4>(v), m4),
                    );
                }
                let blk = r * nb + b;
                let d = f16(w.scales, blk * BLOCK / group);
                dw.0[k][b] = d;
                mw.0[k][b] = if w.dtype == DType::Q4G32A {
                    f16(w.mins, blk)
                } else {
                    -8.0 * d
                };
            }
        }
        let mut t = 0;
        while t * TILE < n {
            let nn = (n - t * TILE).min(TILE);
            let mut acc = [_mm512_setzero_ps(); R];
            for b in 0..nb {
                let tb = t * nb + b;
                // SAFETY: the tile-order arrays hold every tile up to `n` rounded up.
                let (xs, dx, sx) = unsafe {
                    (
                        a.til.as_ptr().add(tb * 8 * TILE * 4),
                        _mm512_loadu_ps(a.td.as_ptr().add(tb * TILE)),
                        _mm512_loadu_ps(a.ts.as_ptr().add(tb * TILE)),
                    )
                };
                let mut p = [_mm512_setzero_si512(); R];
                for g in 0..BLOCK / 4 {
                    // SAFETY: group `g` of the block: 64 bytes.
                    let x = unsafe { _mm512_loadu_si512(xs.add(g * TILE * 4).cast()) };
                    for (p, wu) in p.iter_mut().zip(&wu.0) {
                        // SAFETY: 4 bytes of the unpacked stack row.
                        let wv = unsafe {
                            _mm512_set1_epi32(core::ptr::read_unaligned(
                                wu.as_ptr().add(32 * b + 4 * g).cast::<i32>(),
                            ))
                        };
                        *p = _mm512_dpbusd_epi32(*p, wv, x);
                    }
                }
                for k in 0..R {
                    let s = _mm512_mul_ps(_mm512_set1_ps(dw.0[k][b]), dx);
                    acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[k]), s, acc[k]);
                    acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(mw.0[k][b]), sx, acc[k]);
                }
            }
            for (k, acc) in acc.iter().enumerate().take(rr) {
                let mut res = Aligned([0f32; TILE]);
                // SAFETY: aligned stack array of 16 floats.
                unsafe { _mm512_store_ps(res.0.as_mut_ptr(), *acc) };
                for (j, &v) in res.0.iter().enumerate().take(nn) {
                    // SAFETY: `t * TILE + j < n`, `r0 + k` in `rows`, as the caller vouched.
                    unsafe { out.write(t * TILE + j, r0 + k, v) };
                }
            }
            t += 1;
        }
        r0 += R;
    }
}

/// int8 weights x int8 activations tile: per 2-block chunk one 64-byte load per row,
/// XOR 0x80 (weights + 128, unsigned), one `vpdpbusd` starting from the precomputed
/// `-128 * sum(q_x)` per lane, one convert and one FMA with `dw dx`.
///
/// # Safety
/// As for [`q4_tile_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_tile_i8<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &super::int8::QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let (sn, sk) = (a.stride_nat(), a.stride_blk());
    let bias = _mm512_set1_epi8(-128);
    // Lane `l` of chunk `c` (blocks `2c, 2c + 1` of a 16-block group) is block `2c + l / 8`.
    let idx: [__m512i; 8] = core::array::from_fn(|c| {
        let (b, e) = (2 * c as i32, 2 * c as i32 + 1);
        _mm512_setr_epi32(b, b, b, b, b, b, b, b, e, e, e, e, e, e, e, e)
    });
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let next = NextTile::new(w, rows[R - 1], R);
    let xq: [*const i8; N] = core::array::from_fn(|i| a.nat[acts[i] * sn..].as_ptr());
    let xc: [*const i32; N] = core::array::from_fn(|i| a.corr[acts[i] * sn / 4..].as_ptr());
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(16);
        // SAFETY: rows and blocks in range.
        let (ds, _) = unsafe { block_scales!(w, rows, b0, cnt, false) };
        // SAFETY: the block arrays are padded to a multiple of 16 per row.
        let dxv: [__m512; N] = core::array::from_fn(|i| unsafe {
            _mm512_loadu_ps(a.d.as_ptr().add(acts[i] * sk + b0))
        });
        let scl: [__m512; R] = core::array::from_fn(|k| _mm512_mul_ps(ds[k], dxv[0]));
        for (c, idx) in idx.iter().enumerate().take(cnt.div_ceil(2)) {
            let blk = b0 + 2 * c;
            let rb = (nb - blk).min(2);
            if N == 1 {
                for j in 0..rb {
                    next.block(blk + j);
                }
            }
            let mask: __mmask64 = if rb == 2 { !0 } else { (1u64 << 32) - 1 };
            let mut q = [_mm512_setzero_si512(); R];
            for k in 0..R {
                // SAFETY: the `32 * rb` bytes of blocks `blk..blk + rb` of the row are in
                // the plane; masked-off bytes are not accessed (and become 0 + 128,
                // against zero-padded activations).
                q[k] = unsafe {
                    _mm512_xor_si512(
                        _mm512_maskz_loadu_epi8(
                            mask,
                            w.values.as_ptr().add(rows[k] * cols + blk * BLOCK).cast(),
                        ),
                        bias,
                    )
                };
            }
            let dwc: [__m512; R] = core::array::from_fn(|k| _mm512_permutexvar_ps(*idx, ds[k]));
            for i in 0..N {
                // SAFETY: natural-order rows (and their corrections) are padded to a
                // multiple of 64 values.
                let (x, corr) = unsafe {
                    (
                        _mm512_loadu_si512(xq[i].add(blk * BLOCK).cast()),
                        _mm512_loadu_si512(xc[i].add(blk * BLOCK / 4).cast()),
                    )
                };
                let dxc = if N == 1 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_permutexvar_ps(*idx, dxv[i])
                };
                for k in 0..R {
                    let p = _mm512_dpbusd_epi32(corr, q[k], x);
                    let s = if N == 1 {
                        _mm512_permutexvar_ps(*idx, scl[k])
                    } else {
                        _mm512_mul_ps(dwc[k], dxc)
                    };
                    acc[k][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[k][i]);
                }
            }
        }
        b0 += cnt;
    }
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = _mm512_reduce_add_ps(acc[k][i]);
        }
    }
    res
}

/// [`super::int8::quantize_row_scalar`] on AVX-512, bit for bit: the same `amax / 127`,
/// `1 / d` and round-half-to-even (`vcvtps2dq` under the default rounding mode).
///
/// # Safety
/// AVX-512F/BW/VL/VNNI; `x.len()` a multiple of 32, `q`, `d`, `s`, `corr` at least
/// `x.len()`, `x.len() / 32`, `x.len() / 32`, `x.len() / 4` long.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn quantize_row(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    corr: &mut [i32],
) {
    let nb = x.len() / BLOCK;
    assert!(q.len() >= x.len() && d.len() >= nb && s.len() >= nb && corr.len() >= x.len() / 4);
    let ones = _mm256_set1_epi8(1);
    for b in 0..nb {
        // SAFETY: block `b` is in bounds of every slice (asserted above).
        unsafe {
            let p = x.as_ptr().add(b * BLOCK);
            let (x0, x1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
            let db = amax / 127.0;
            let id = _mm512_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
            let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));
            let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
            let qb = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm512_cvtepi32_epi8(q0)),
                _mm512_cvtepi32_epi8(q1),
            );
            _mm256_storeu_si256(q.as_mut_ptr().add(b * BLOCK).cast(), qb);
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            *d.get_unchecked_mut(b) = db;
            *s.get_unchecked_mut(b) = db * sum as f32;
            let c = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, qb);
            let c = _mm256_mullo_epi32(c, _mm256_set1_epi32(-128));
            _mm256_storeu_si256(corr.as_mut_ptr().add(b * 8).cast(), c);
        }
    }
}
