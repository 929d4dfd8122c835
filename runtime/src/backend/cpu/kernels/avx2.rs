//! AVX2 + FMA + F16C kernels (8 f32 lanes).
//!
//! Same tiling as the AVX-512 kernels (see `avx512.rs`; here matvec tiles are 4 rows,
//! matmul tiles 1 row x 8 activations, 1 x 4 for a remainder). AVX2 has no 16-entry
//! permute, so int4 nibbles are widened (`vpmovzxbd`), masked or shifted, and converted
//! to f32. With one activation row the int4 kernel uses the factored form
//! `d * sum(q x) + m * sum(x)`: the block sum of `x` is three adds per block, computed
//! inline and shared by all rows of the tile (no scratch buffer), which saves two of the
//! eight FMAs per row and block compared with dequantizing `w = d q + m` first. With
//! several activation rows `w` is dequantized once and reused, which is cheaper per
//! activation row.

use core::arch::x86_64::*;
use core::ops::Range;

use glint_format::{BLOCK, DType, Matrix};

use super::{Aligned, NextTile, Out, drive};

/// Weight rows per tile for a single activation row (matvec), int4.
const MV_ROWS_Q4: usize = 4;
/// Weight rows per tile for a single activation row (matvec), int8.
const MV_ROWS_Q8: usize = 4;
/// Weight rows per tile for a single activation row (matvec), f32 and f16.
const MV_ROWS_FLOAT: usize = 4;
/// Weight rows per tile for several activation rows (matmul).
const MM_ROWS: usize = 1;
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
/// The CPU must support AVX2, FMA and F16C; `super::check(w, x, n, &rows)` must have
/// passed; `out` must be writable at every `(i, r)`, `i < n`, `r` in `rows`.
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

/// Loads the `count` (1..=8) little-endian f16 values at byte `at` of `plane` as f32
/// lanes. Reads 8 values straight from the plane when they are there (lanes past
/// `count` are then garbage, and never used), else goes through a zero-padded copy.
///
/// # Safety
/// `plane[at..at + 2 * count]` must be in bounds.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(plane: &[u8], at: usize, count: usize) -> __m256 {
    if at + 16 <= plane.len() {
        // SAFETY: 16 bytes in bounds, checked just above; unaligned load.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(plane.as_ptr().add(at).cast()) })
    } else {
        let mut buf = [0u16; 8];
        // SAFETY: `count <= 8` elements fit `buf`, and are in the plane, by the caller.
        unsafe {
            core::ptr::copy_nonoverlapping(
                plane.as_ptr().add(at),
                buf.as_mut_ptr().cast::<u8>(),
                2 * count,
            )
        };
        // SAFETY: `buf` is 16 bytes.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(buf.as_ptr().cast()) })
    }
}

/// Horizontal sum of 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the two accumulator sets.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn reduce<const R: usize, const N: usize>(
    a: &[[__m256; N]; R],
    b: &[[__m256; N]; R],
) -> [[f32; N]; R] {
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = hsum(_mm256_add_ps(a[k][i], b[k][i]));
        }
    }
    res
}

/// Loads the 32 activations of one block as four vectors.
///
/// # Safety
/// `p` must be readable for 32 f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_x4(p: *const f32) -> [__m256; 4] {
    // SAFETY: by the caller; unaligned loads.
    unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

/// int4 (any group, with or without minimums) tile.
///
/// # Safety
/// As for [`run`]; `rows` are valid row indices and every `xs[i]` has `w.cols` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_tile<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let group = w.dtype.group().unwrap_or(BLOCK);
    let asym = w.dtype == DType::Q4G32A;
    // Scale lane `b` of a chunk of 8 blocks is scale `b >> shift` of the chunk.
    let shift = (group / BLOCK).trailing_zeros() as i32;
    let expand = _mm256_srlv_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(shift),
    );
    let nibble = _mm256_set1_epi32(0x0f);
    let mut acc0 = [[_mm256_setzero_ps(); N]; R];
    let mut acc1 = acc0;
    let next = NextTile::new(w, rows[R - 1], R);
    let mut ds = [Aligned([0f32; 8]); R];
    let mut ms = [Aligned([0f32; 8]); R];
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(8);
        for k in 0..R {
            // Chunks start at multiples of 256 elements, at a group boundary for every
            // group size.
            let first = rows[k] * nb + b0;
            // SAFETY: `cnt * 32 / group` scales (exact: rows are whole groups) and `cnt`
            // minimums from the chunk start lie within the row, hence the validated
            // planes; 8 f32 fit each stack array.
            unsafe {
                let d = load_f16(w.scales, 2 * (first * BLOCK / group), cnt * BLOCK / group);
                let d = if shift == 0 {
                    d
                } else {
                    _mm256_permutevar8x32_ps(d, expand)
                };
                let m = if asym {
                    load_f16(w.mins, 2 * first, cnt)
                } else {
                    _mm256_mul_ps(d, _mm256_set1_ps(-8.0))
                };
                _mm256_storeu_ps(ds[k].0.as_mut_ptr(), d);
                _mm256_storeu_ps(ms[k].0.as_mut_ptr(), m);
            }
        }
        for b in 0..cnt {
            let blk = b0 + b;
            if N == 1 {
                next.block(blk);
            }
            let mut q = [[_mm256_setzero_ps(); 4]; R];
            for (k, qk) in q.iter_mut().enumerate() {
                // SAFETY: the 16 bytes of block `blk` of row `rows[k]` lie in the plane.
                let (v0, v1) = unsafe {
                    let p = w
                        .values
                        .as_ptr()
                        .add(rows[k] * cols / 2 + blk * (BLOCK / 2));
                    (
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())),
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast())),
                    )
                };
                // Elements 0..8, 8..16 (low nibbles) and 16..24, 24..32 (high nibbles).
                *qk = [
                    _mm256_cvtepi32_ps(_mm256_and_si256(v0, nibble)),
                    _mm256_cvtepi32_ps(_mm256_and_si256(v1, nibble)),
                    _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v0)),
                    _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v1)),
                ];
            }
            if N == 1 {
                // SAFETY: 32 activations at `blk * 32 < cols`.
                let x = unsafe { load_x4(xs[0].add(blk * BLOCK)) };
                let sx = _mm256_add_ps(_mm256_add_ps(x[0], x[1]), _mm256_add_ps(x[2], x[3]));
                for k in 0..R {
                    let mut t = _mm256_mul_ps(q[k][0], x[0]);
                    t = _mm256_fmadd_ps(q[k][1], x[1], t);
                    t = _mm256_fmadd_ps(q[k][2], x[2], t);
                    t = _mm256_fmadd_ps(q[k][3], x[3], t);
                    acc0[k][0] = _mm256_fmadd_ps(t, _mm256_set1_ps(ds[k].0[b]), acc0[k][0]);
                    acc1[k][0] = _mm256_fmadd_ps(sx, _mm256_set1_ps(ms[k].0[b]), acc1[k][0]);
                }
            } else {
                for (k, qk) in q.iter_mut().enumerate() {
                    let (d, m) = (_mm256_set1_ps(ds[k].0[b]), _mm256_set1_ps(ms[k].0[b]));
                    for v in qk.iter_mut() {
                        *v = _mm256_fmadd_ps(*v, d, m);
                    }
                }
                for i in 0..N {
                    // SAFETY: 32 activations of row `i` at `blk * 32 < cols`.
                    let x = unsafe { load_x4(xs[i].add(blk * BLOCK)) };
                    for k in 0..R {
                        acc0[k][i] = _mm256_fmadd_ps(q[k][0], x[0], acc0[k][i]);
                        let a1 = if split(R, N) {
                            &mut acc1[k][i]
                        } else {
                            &mut acc0[k][i]
                        };
                        *a1 = _mm256_fmadd_ps(q[k][1], x[1], *a1);
                        acc0[k][i] = _mm256_fmadd_ps(q[k][2], x[2], acc0[k][i]);
                        let a1 = if split(R, N) {
                            &mut acc1[k][i]
                        } else {
                            &mut acc0[k][i]
                        };
                        *a1 = _mm256_fmadd_ps(q[k][3], x[3], *a1);
                    }
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_tile<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let mut acc0 = [[_mm256_setzero_ps(); N]; R];
    let mut acc1 = acc0;
    let next = NextTile::new(w, rows[R - 1], R);
    let mut ds = [Aligned([0f32; 8]); R];
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(8);
        for k in 0..R {
            // SAFETY: `cnt` scales of row `rows[k]` from block `b0` lie in the plane; 8
            // f32 fit `ds[k]`.
            unsafe {
                let d = load_f16(w.scales, 2 * (rows[k] * nb + b0), cnt);
                _mm256_storeu_ps(ds[k].0.as_mut_ptr(), d);
            }
        }
        for b in 0..cnt {
            let blk = b0 + b;
            if N == 1 {
                next.block(blk);
            }
            let mut q = [[_mm256_setzero_ps(); 4]; R];
            for (k, qk) in q.iter_mut().enumerate() {
                // SAFETY: the 32 bytes of block `blk` of row `rows[k]` lie in the plane.
                unsafe {
                    let p = w.values.as_ptr().add(rows[k] * cols + blk * BLOCK);
                    for (j, v) in qk.iter_mut().enumerate() {
                        *v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            p.add(8 * j).cast(),
                        )));
                    }
                }
            }
            if N == 1 {
                // SAFETY: 32 activations at `blk * 32 < cols`.
                let x = unsafe { load_x4(xs[0].add(blk * BLOCK)) };
                for k in 0..R {
                    let t0 = _mm256_fmadd_ps(q[k][1], x[1], _mm256_mul_ps(q[k][0], x[0]));
                    let t1 = _mm256_fmadd_ps(q[k][3], x[3], _mm256_mul_ps(q[k][2], x[2]));
                    let d = _mm256_set1_ps(ds[k].0[b]);
                    acc0[k][0] = _mm256_fmadd_ps(t0, d, acc0[k][0]);
                    acc1[k][0] = _mm256_fmadd_ps(t1, d, acc1[k][0]);
                }
            } else {
                for (k, qk) in q.iter_mut().enumerate() {
                    let d = _mm256_set1_ps(ds[k].0[b]);
                    for v in qk.iter_mut() {
                        *v = _mm256_mul_ps(*v, d);
                    }
                }
                for i in 0..N {
                    // SAFETY: 32 activations of row `i` at `blk * 32 < cols`.
                    let x = unsafe { load_x4(xs[i].add(blk * BLOCK)) };
                    for k in 0..R {
                        acc0[k][i] = _mm256_fmadd_ps(q[k][0], x[0], acc0[k][i]);
                        let a1 = if split(R, N) {
                            &mut acc1[k][i]
                        } else {
                            &mut acc0[k][i]
                        };
                        *a1 = _mm256_fmadd_ps(q[k][1], x[1], *a1);
                        acc0[k][i] = _mm256_fmadd_ps(q[k][2], x[2], acc0[k][i]);
                        let a1 = if split(R, N) {
                            &mut acc1[k][i]
                        } else {
                            &mut acc0[k][i]
                        };
                        *a1 = _mm256_fmadd_ps(q[k][3], x[3], *a1);
                    }
                }
            }
        }
        b0 += cnt;
    }
    reduce(&acc0, &acc1)
}

/// Loads 8 weights at `p` (f16 when `HALF`, else f32).
///
/// # Safety
/// `p` must be readable for 8 elements.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_w<const HALF: bool>(p: *const u8) -> __m256 {
    // SAFETY: by the caller; unaligned loads.
    unsafe {
        if HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// One 16-column step of [`float_tile`].
///
/// # Safety
/// Every `wp[k]` must be readable for 16 weights and every `xp[i]` for 16 f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn float_step<const R: usize, const N: usize, const HALF: bool>(
    wp: &[*const u8; R],
    xp: &[*const f32; N],
    acc0: &mut [[__m256; N]; R],
    acc1: &mut [[__m256; N]; R],
) {
    let esize = if HALF { 2 } else { 4 };
    let mut w0 = [_mm256_setzero_ps(); R];
    let mut w1 = [_mm256_setzero_ps(); R];
    for k in 0..R {
        // SAFETY: 16 weights readable at `wp[k]`, by the caller.
        unsafe {
            w0[k] = load_w::<HALF>(wp[k]);
            w1[k] = load_w::<HALF>(wp[k].add(8 * esize));
        }
    }
    for i in 0..N {
        // SAFETY: 16 f32 readable at `xp[i]`, by the caller.
        let (x0, x1) = unsafe { (_mm256_loadu_ps(xp[i]), _mm256_loadu_ps(xp[i].add(8))) };
        for k in 0..R {
            acc0[k][i] = _mm256_fmadd_ps(w0[k], x0, acc0[k][i]);
            let a1 = if split(R, N) {
                &mut acc1[k][i]
            } else {
                &mut acc0[k][i]
            };
            *a1 = _mm256_fmadd_ps(w1[k], x1, *a1);
        }
    }
}

/// f32 / f16 tile (any column count: the last partial 16 columns go through zero-padded
/// stack copies).
///
/// # Safety
/// As for [`q4_tile`].
#[target_feature(enable = "avx2,fma,f16c")]
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tile_t<const R: usize, const N: usize, const HALF: bool>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    xs: &[*const f32; N],
) -> [[f32; N]; R] {
    const STEP: usize = 16;
    let cols = w.cols;
    let esize = if HALF { 2 } else { 4 };
    let main = cols / STEP * STEP;
    let mut acc0 = [[_mm256_setzero_ps(); N]; R];
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
// int8 activations (AVX2: `vpmaddubsw` + `vpmaddwd`), see `int8.rs`.

/// Weight rows per tile, one activation row (decode).
const Q_MV_ROWS: usize = 4;
/// Weight rows per tile, several activation rows (prefill).
const Q_MM_ROWS: usize = 2;
/// Activation rows per tile (prefill).
const Q_MM_ACTS: usize = 4;
/// Activation rows per tile for a remainder of at most this many rows.
const Q_MM_REST: usize = 1;

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `int8::check_q` must have passed; `out` must
/// be writable at every `(i, r)`, `i < a.rows()`, `r` in `rows`.
pub(super) unsafe fn run_q8act(
    w: &Matrix<'_>,
    a: &super::int8::QuantActs,
    rows: Range<usize>,
    out: Out,
) {
    use super::int8::drive_q;
    let n = a.rows();
    macro_rules! go {
        ($tile:ident) => {
            if n == 1 {
                // SAFETY: `drive_q` hands the tiles in-range rows and activation indices;
                // the planes were validated by `check_q`; CPU support is our contract.
                unsafe {
                    drive_q::<Q_MV_ROWS, 1, 1>(
                        n,
                        rows,
                        out,
                        |r, i| $tile::<Q_MV_ROWS, 1>(w, r, a, i),
                        |r, i| $tile::<Q_MV_ROWS, 1>(w, r, a, i),
                    )
                }
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
        go!(q8_tile_i8)
    } else {
        go!(q4_tile_i8)
    }
}

/// The `R` rows' weight scales and minimums (stored, or `-8 d` when symmetric) for the
/// `cnt <= 8` blocks from `b0`, one block per lane, lanes past `cnt` zeroed.
///
/// # Safety
/// Rows and blocks in range of the validated planes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_scales8<const R: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    b0: usize,
    cnt: usize,
) -> ([__m256; R], [__m256; R]) {
    let nb = w.cols / BLOCK;
    let group = w.dtype.group().unwrap_or(BLOCK);
    let shift = (group / BLOCK).trailing_zeros();
    let expand = _mm256_srlv_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(shift as i32),
    );
    let keep = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(cnt as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let mut ds = [_mm256_setzero_ps(); R];
    let mut ms = [_mm256_setzero_ps(); R];
    for k in 0..R {
        let first = rows[k] * nb + b0;
        // SAFETY: whole groups of the row (chunks start at multiples of 256 elements)
        // and `cnt` minimums lie in the planes.
        unsafe {
            let d = load_f16(
                w.scales,
                2 * (first * BLOCK / group),
                (cnt * BLOCK).div_ceil(group),
            );
            let d = if shift == 0 {
                d
            } else {
                _mm256_permutevar8x32_ps(d, expand)
            };
            ds[k] = _mm256_and_ps(d, _mm256_castsi256_ps(keep));
            ms[k] = if w.dtype == DType::Q4G32A {
                _mm256_and_ps(load_f16(w.mins, 2 * first, cnt), _mm256_castsi256_ps(keep))
            } else {
                _mm256_mul_ps(ds[k], _mm256_set1_ps(-8.0))
            };
        }
    }
    (ds, ms)
}

/// int4 weights x int8 activations tile: per pair of blocks one 32-byte load of nibbles
/// per row, `vpmaddubsw` on low and high nibbles (at most 2 * 15 * 127 per i16, no
/// saturation), summed and widened by `vpmaddwd`, then one convert and one FMA with the
/// per-lane `dw dx`; the minimum term once per 8 blocks.
///
/// # Safety
/// As for [`run_q8act`]; `rows` valid, `acts` `< a.rows()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_tile_i8<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &super::int8::QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let (sb, sk) = (a.stride_nib(), a.stride_blk());
    let m4 = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    // Lane `l` of pair `h` of an 8-block group is block `2h + l / 4`.
    let idx: [__m256i; 4] = core::array::from_fn(|h| {
        let (b, e) = (2 * h as i32, 2 * h as i32 + 1);
        _mm256_setr_epi32(b, b, b, b, e, e, e, e)
    });
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let next = NextTile::new(w, rows[R - 1], R);
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(8);
        // SAFETY: rows and blocks in range.
        let (ds, ms) = unsafe { block_scales8::<R>(w, rows, b0, cnt) };
        for i in 0..N {
            // SAFETY: the block arrays are padded to a multiple of 16 per row.
            let sx = unsafe { _mm256_loadu_ps(a.s.as_ptr().add(acts[i] * sk + b0)) };
            for k in 0..R {
                acc[k][i] = _mm256_fmadd_ps(ms[k], sx, acc[k][i]);
            }
        }
        for (h, idx) in idx.iter().enumerate().take(cnt.div_ceil(2)) {
            let blk = b0 + 2 * h;
            let two = blk + 1 < nb;
            if N == 1 {
                next.block(blk);
                if two {
                    next.block(blk + 1);
                }
            }
            let mut lo = [_mm256_setzero_si256(); R];
            let mut hi = [_mm256_setzero_si256(); R];
            for k in 0..R {
                // SAFETY: blocks `blk` (and `blk + 1` when `two`) of the row are in the plane.
                let v = unsafe {
                    let p = w
                        .values
                        .as_ptr()
                        .add(rows[k] * cols / 2 + blk * (BLOCK / 2));
                    if two {
                        _mm256_loadu_si256(p.cast())
                    } else {
                        _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(p.cast()))
                    }
                };
                lo[k] = _mm256_and_si256(v, m4);
                hi[k] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            }
            let dwc: [__m256; R] = core::array::from_fn(|k| _mm256_permutevar8x32_ps(ds[k], *idx));
            for i in 0..N {
                // SAFETY: the nibble-order row is padded to a multiple of 128 bytes and the
                // repeated scales to a multiple of 4 blocks.
                let (xl, xh, dx) = unsafe {
                    let p = a
                        .nib
                        .as_ptr()
                        .add(acts[i] * sb + blk / 4 * 128 + blk % 4 * 16);
                    (
                        _mm256_loadu_si256(p.cast()),
                        _mm256_loadu_si256(p.add(64).cast()),
                        _mm256_loadu_ps(a.d4.as_ptr().add(acts[i] * sb / 8 + 4 * blk)),
                    )
                };
                for k in 0..R {
                    let p16 = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo[k], xl),
                        _mm256_maddubs_epi16(hi[k], xh),
                    );
                    let p = _mm256_madd_epi16(p16, ones);
                    acc[k][i] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(p),
                        _mm256_mul_ps(dwc[k], dx),
                        acc[k][i],
                    );
                }
            }
        }
        b0 += cnt;
    }
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = hsum(acc[k][i]);
        }
    }
    res
}

/// int8 weights x int8 activations tile: per block, `|q_w|` times `q_x` with the sign of
/// `q_w` (`vpsignb`; at most 2 * 128 * 127 per i16) through `vpmaddubsw` + `vpmaddwd`,
/// then one convert and one FMA with `dw dx`.
///
/// # Safety
/// As for [`q4_tile_i8`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_tile_i8<const R: usize, const N: usize>(
    w: &Matrix<'_>,
    rows: &[usize; R],
    a: &super::int8::QuantActs,
    acts: &[usize; N],
) -> [[f32; N]; R] {
    let cols = w.cols;
    let nb = cols / BLOCK;
    let (sn, sk) = (a.stride_nat(), a.stride_blk());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let next = NextTile::new(w, rows[R - 1], R);
    let mut ds = [Aligned([0f32; 8]); R];
    let mut b0 = 0;
    while b0 < nb {
        let cnt = (nb - b0).min(8);
        // SAFETY: rows and blocks in range.
        let (d, _) = unsafe { block_scales8::<R>(w, rows, b0, cnt) };
        for k in 0..R {
            // SAFETY: 8 f32 fit the aligned array.
            unsafe { _mm256_store_ps(ds[k].0.as_mut_ptr(), d[k]) };
        }
        for b in 0..cnt {
            let blk = b0 + b;
            if N == 1 {
                next.block(blk);
            }
            let mut qa = [_mm256_setzero_si256(); R];
            let mut qw = [_mm256_setzero_si256(); R];
            for k in 0..R {
                // SAFETY: the 32 bytes of block `blk` of the row are in the plane.
                qw[k] = unsafe {
                    _mm256_loadu_si256(w.values.as_ptr().add(rows[k] * cols + blk * BLOCK).cast())
                };
                qa[k] = _mm256_abs_epi8(qw[k]);
            }
            for i in 0..N {
                // SAFETY: block `blk` of the natural-order row, and its scale.
                let (x, dx) = unsafe {
                    (
                        _mm256_loadu_si256(a.nat.as_ptr().add(acts[i] * sn + blk * BLOCK).cast()),
                        *a.d.get_unchecked(acts[i] * sk + blk),
                    )
                };
                for k in 0..R {
                    let p = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(qa[k], _mm256_sign_epi8(x, qw[k])),
                        ones,
                    );
                    acc[k][i] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(p),
                        _mm256_set1_ps(ds[k].0[b] * dx),
                        acc[k][i],
                    );
                }
            }
        }
        b0 += cnt;
    }
    let mut res = [[0f32; N]; R];
    for k in 0..R {
        for i in 0..N {
            res[k][i] = hsum(acc[k][i]);
        }
    }
    res
}
