//! The int8-activation path ([`Precision::Int8`](crate::backend::Precision)): activations
//! are quantized to int8 once per input vector, per 32-element block (llama.cpp's Q8_1:
//! `d = amax / 127`, `q = round(x / d)`, plus the block sum `s = d * sum(q)`), and each
//! weight block is dotted with them in integer arithmetic:
//!
//! * int4 with minimums (Q4G32A, GGUF Q4_1): `dw dx sum(q_w q_x) + m s`;
//! * symmetric int4 (Q4G32/64/128, GGUF Q4_0 and wider groups): the same with `m = -8 dw`
//!   (`q_w` are the raw nibbles `0..=15`);
//! * int8 (Q8G32, GGUF Q8_0): `dw dx sum(q_w q_x)`.
//!
//! The integer sums are exact in every kernel; only the f32 sum over blocks rounds, so a
//! SIMD kernel agrees with [`Kernel::Scalar`] to about 1e-6 of `sum |terms|`. The
//! approximation is the activation rounding itself (one int8 step is `amax / 127` per
//! block); its effect on the model is measured in `benches/README.md`.
//!
//! One [`QuantActs`] holds the quantized rows in the layouts every kernel wants (natural
//! order for int8 weights; "nibble order" for int4 weights, where a 4-block chunk of 128
//! activations is stored as the four blocks' first halves then their second halves, the
//! order in which one 64-byte load of int4 weights yields its low then its high
//! nibbles), so the per-block shuffles happen once per input, not once per weight row.
//!
//! Kernels: [`Kernel::Scalar`] (reference), [`Kernel::Avx2`] (`vpmaddubsw` +
//! `vpmaddwd`, the sign trick for int8 x int8), [`Kernel::Avx512`] (AVX-512 VNNI
//! `vpdpbusd`: unsigned nibbles times signed activations directly; int8 weights are
//! offset by 128 to make them unsigned and the offset is removed by starting the integer
//! accumulator at `-128 * sum(q_x)` per 4 activations, precomputed here). An AVX-512 CPU
//! without VNNI runs the AVX2 int8 kernels. On aarch64, [`Kernel::Neon`] (widening
//! `smull`/`smlal2`) and [`Kernel::NeonDot`] (`sdot`, signed x signed) read the
//! natural-order rows and need no offset (`neon.rs`); both quantize rows with the NEON
//! row quantizer (`neon::quantize_row`, bit-identical to the scalar one).

use core::ops::Range;
use std::collections::TryReserveError;

use glint_format::{BLOCK, DType, Matrix};
use half::f16;

use super::{Kernel, Out, scatter};

/// Whether the int8-activation path has kernels for `dtype`: every block-quantized
/// type. Float weights (f32, f16) always take the exact path.
pub fn int8_supported(dtype: DType) -> bool {
    dtype.is_quantized()
}

/// Up to `n` activation rows of `cols` elements quantized to int8 per 32-element block,
/// in the layouts the kernels read (see the module docs). Allocated once for the largest
/// shape ([`QuantActs::new`]) and refilled by [`QuantActs::quantize`]; quantizing never
/// allocates.
#[derive(Clone, Debug, Default)]
pub struct QuantActs {
    n: usize,
    cols: usize,
    max_n: usize,
    max_cols: usize,
    /// `[n][stride_nat]` int8 in natural order, zero-padded to a multiple of 64.
    pub(super) nat: Vec<i8>,
    /// `[n][stride_nib]` int8 in nibble order, zero-padded to a multiple of 128.
    pub(super) nib: Vec<i8>,
    /// `[n][stride_nat / 4]`: `-128 * (sum of 4 consecutive natural-order values)`.
    pub(super) corr: Vec<i32>,
    /// `[n][stride_blk]` block scales `d`, zero-padded to a multiple of 16 blocks.
    pub(super) d: Vec<f32>,
    /// `[n][stride_blk]` `d * sum(q)` per block, zero-padded likewise.
    pub(super) s: Vec<f32>,
    /// `[n][stride_nib / 8]`: each block scale repeated 4 times (one per 32-bit lane of
    /// the block's integer sums), zero-padded.
    pub(super) d4: Vec<f32>,
    /// "Tile order" for the multi-row kernels: rows in tiles of [`TILE`], and per tile,
    /// block and group of 4 values, the 4 values of each of the tile's rows
    /// (`[tile][block][8][TILE][4]`, 64 bytes per group), so one 64-byte load feeds a
    /// `vpdpbusd` against 4 broadcast weights for 16 rows at once. Rows past `n` in the
    /// last tile are zero. Filled only when `n > 1`.
    pub(super) til: Vec<i8>,
    /// `[tile][block][TILE]` block scales in tile order (zero for padding rows).
    pub(super) td: Vec<f32>,
    /// `[tile][block][TILE]` `d * sum(q)` in tile order.
    pub(super) ts: Vec<f32>,
}

/// Activation rows per tile of the tile-order layout ([`QuantActs`]).
pub const TILE: usize = 16;

/// 1.5 * 2^23: see [`QuantActs::quantize`].
const ROUND: f32 = 12_582_912.0;

impl QuantActs {
    /// Room for up to `max_n` rows of up to `max_cols` (a multiple of 32) elements.
    /// `Err` when the memory cannot be had (or its size overflows).
    pub fn new(max_n: usize, max_cols: usize) -> Result<Self, TryReserveError> {
        let (nat, nib, blk) = Self::strides(max_cols);
        let n = max_n.max(1);
        let tiled = n.next_multiple_of(TILE);
        Ok(Self {
            n: 0,
            cols: 0,
            max_n: n,
            max_cols,
            nat: zeros(n, nat)?,
            nib: zeros(n, nib)?,
            corr: zeros(n, nat / 4)?,
            d: zeros(n, blk)?,
            s: zeros(n, blk)?,
            d4: zeros(n, nib / 8)?,
            til: zeros(tiled, max_cols)?,
            td: zeros(tiled, max_cols / BLOCK)?,
            ts: zeros(tiled, max_cols / BLOCK)?,
        })
    }

    /// Row strides for `cols`: natural-order bytes, nibble-order bytes, blocks.
    fn strides(cols: usize) -> (usize, usize, usize) {
        (
            cols.next_multiple_of(64),
            cols.next_multiple_of(128),
            (cols / BLOCK).next_multiple_of(16),
        )
    }

    pub(super) fn stride_nat(&self) -> usize {
        Self::strides(self.cols).0
    }

    pub(super) fn stride_nib(&self) -> usize {
        Self::strides(self.cols).1
    }

    pub(super) fn stride_blk(&self) -> usize {
        Self::strides(self.cols).2
    }

    /// Rows quantized by the last [`QuantActs::quantize`].
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes [`QuantActs::new`] allocates for these sizes (saturating), for planning
    /// memory before allocating.
    pub fn bytes_for(max_n: usize, max_cols: usize) -> u64 {
        let (nat, nib, blk) = Self::strides(max_cols);
        let n = max_n.max(1) as u64;
        let tiled = max_n.max(1).next_multiple_of(TILE) as u64;
        let (nat, nib, blk, cols) = (nat as u64, nib as u64, blk as u64, max_cols as u64);
        let bytes = n * (nat + nib) + tiled * cols;
        let words = n * (nat / 4 + 2 * blk + nib / 8) + 2 * tiled * (cols / BLOCK as u64);
        bytes.saturating_add(words.saturating_mul(4))
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> u64 {
        (self.nat.len()
            + self.nib.len()
            + self.til.len()
            + 4 * (self.corr.len()
                + self.d.len()
                + self.s.len()
                + self.d4.len()
                + self.td.len()
                + self.ts.len())) as u64
    }

    /// Quantizes the `n` rows of `x` (`[n][cols]`, `cols` a multiple of 32) with
    /// `kernel`'s row quantizer (every one gives the same bits). Panics if the shape
    /// exceeds what [`QuantActs::new`] was given.
    pub fn quantize(&mut self, kernel: Kernel, x: &[f32], n: usize, cols: usize) {
        assert!(
            cols.is_multiple_of(BLOCK) && cols > 0,
            "cols must be a positive multiple of 32"
        );
        assert!(
            n <= self.max_n && cols <= self.max_cols,
            "QuantActs too small for [{n}][{cols}]"
        );
        assert_eq!(x.len(), n * cols, "x must be [n][cols]");
        self.n = n;
        self.cols = cols;
        let (sn, sb, sk) = (self.stride_nat(), self.stride_nib(), self.stride_blk());
        let nb = cols / BLOCK;
        let tiled = n > 1;
        let simd = use_simd_quantize(kernel);
        if tiled {
            // Zero the padding rows of the last tile.
            let (t, j0) = (n / TILE, n % TILE);
            if j0 > 0 {
                for b in 0..nb {
                    let at = (t * nb + b) * TILE;
                    self.td[at + j0..at + TILE].fill(0.0);
                    self.ts[at + j0..at + TILE].fill(0.0);
                    for g in 0..BLOCK / 4 {
                        let at = ((t * nb + b) * 8 + g) * TILE * 4;
                        self.til[at + 4 * j0..at + 4 * TILE].fill(0);
                    }
                }
            }
        }
        for (i, xr) in x.chunks_exact(cols).enumerate() {
            let nat = &mut self.nat[i * sn..(i + 1) * sn];
            let nib = &mut self.nib[i * sb..(i + 1) * sb];
            let corr = &mut self.corr[i * sn / 4..(i + 1) * sn / 4];
            let d = &mut self.d[i * sk..(i + 1) * sk];
            let s = &mut self.s[i * sk..(i + 1) * sk];
            let d4 = &mut self.d4[i * sb / 8..(i + 1) * sb / 8];
            nat[cols..].fill(0);
            nib.fill(0);
            corr[cols / 4..].fill(0);
            d[cols / BLOCK..].fill(0.0);
            s[cols / BLOCK..].fill(0.0);
            d4.fill(0.0);
            #[cfg(target_arch = "x86_64")]
            let done = simd && {
                // SAFETY: `simd` means AVX-512F/BW/VL/VNNI; the slices hold `cols` values,
                // `cols / 32` blocks and `cols / 4` corrections.
                unsafe { super::avx512::quantize_row(xr, nat, d, s, corr) };
                true
            };
            #[cfg(target_arch = "aarch64")]
            let done = simd && {
                // SAFETY: `simd` means a NEON kernel (baseline on aarch64); the slices
                // hold `cols` values, `cols / 32` blocks and `cols / 4` corrections.
                unsafe { super::neon::quantize_row(xr, nat, d, s, corr) };
                true
            };
            // No SIMD row quantizer elsewhere (`simd` is false there).
            #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
            let done = simd;
            if !done {
                quantize_row_scalar(xr, nat, d, s, corr);
            }
            for b in 0..nb {
                let q = &nat[b * BLOCK..(b + 1) * BLOCK];
                let db = d[b];
                d4[4 * b..4 * b + 4].fill(db);
                let at = (b / 4) * 128 + (b % 4) * 16;
                nib[at..at + 16].copy_from_slice(&q[..16]);
                nib[at + 64..at + 80].copy_from_slice(&q[16..]);
                if tiled {
                    let (t, j) = (i / TILE, i % TILE);
                    let tb = t * nb + b;
                    self.td[tb * TILE + j] = db;
                    self.ts[tb * TILE + j] = s[b];
                    for g in 0..BLOCK / 4 {
                        let at = (tb * 8 + g) * TILE * 4 + 4 * j;
                        self.til[at..at + 4].copy_from_slice(&q[4 * g..4 * g + 4]);
                    }
                }
            }
        }
    }

    /// Natural-order values of row `i`, block `b`.
    fn block(&self, i: usize, b: usize) -> &[i8] {
        &self.nat[i * self.stride_nat() + b * BLOCK..][..BLOCK]
    }

    /// Scale of row `i`, block `b`.
    fn scale(&self, i: usize, b: usize) -> f32 {
        self.d[i * self.stride_blk() + b]
    }

    /// `d * sum(q)` of row `i`, block `b`.
    fn sum(&self, i: usize, b: usize) -> f32 {
        self.s[i * self.stride_blk() + b]
    }
}

/// `rows * cols` zeros, or an error instead of an abort when the memory is not there.
fn zeros<T: Clone + Default>(rows: usize, cols: usize) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    // An impossible size fails the reservation like an allocation that does not fit.
    v.try_reserve_exact(rows.saturating_mul(cols))?;
    v.resize(rows * cols, T::default());
    Ok(v)
}

/// Whether [`QuantActs::quantize`] uses a SIMD row quantizer (each bit-identical to
/// [`quantize_row_scalar`]): the AVX-512 one when `kernel` is AVX-512 and the CPU has F,
/// BW, VL and VNNI; the NEON one when `kernel` is [`Kernel::Neon`] or
/// [`Kernel::NeonDot`] and available.
fn use_simd_quantize(kernel: Kernel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernel == Kernel::Avx512
            && kernel.available()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(target_arch = "aarch64")]
    {
        (kernel == Kernel::Neon || kernel == Kernel::NeonDot) && kernel.available()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = kernel;
        false
    }
}

/// The int8 block rule (llama.cpp's Q8_0): `d = max |x| / 127` and `q = round(x / d)`
/// (half to even) for one 32-element block `xb` into `qb`; returns `d`. Used for
/// activations and for the int8 KV cache.
pub(super) fn quantize_block(xb: &[f32], qb: &mut [i8]) -> f32 {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let db = amax / 127.0;
    let id = if db > 0.0 { 1.0 / db } else { 0.0 };
    for (q, &v) in qb.iter_mut().zip(xb) {
        // Round half to even without a libm call (`rintf` is not inlined on the
        // x86-64 baseline): adding 1.5 * 2^23 leaves no fraction bits. Exact for
        // |v * id| <= 127.5.
        *q = ((v * id + ROUND) - ROUND) as i8;
    }
    db
}

/// Quantizes one row `x` (`cols` a multiple of 32) into `q` (natural order), the block
/// scales `d`, `d * sum(q)` per block in `s` and `-128 * (sum of 4 values)` in `corr`.
pub(super) fn quantize_row_scalar(
    x: &[f32],
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    corr: &mut [i32],
) {
    for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
        let qb = &mut q[b * BLOCK..(b + 1) * BLOCK];
        let db = quantize_block(xb, qb);
        let sum: i32 = qb.iter().map(|&v| v as i32).sum();
        d[b] = db;
        s[b] = db * sum as f32;
        for (l, c) in corr[b * 8..(b + 1) * 8].iter_mut().enumerate() {
            *c = -128 * qb[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
        }
    }
}

impl Kernel {
    /// `y_rows[i * rows.len() + r - rows.start] = sum_c W[r, c] * xq[i][c]` with the
    /// activations of `a` (every row of it), for `r` in `rows`. Panics if the CPU lacks
    /// the kernel, if `w`'s dtype has no int8 kernel ([`int8_supported`]) or on a shape
    /// mismatch.
    pub fn matmul_q8act_rows(
        self,
        w: &Matrix<'_>,
        a: &QuantActs,
        rows: Range<usize>,
        y_rows: &mut [f32],
    ) {
        check_q(w, a, &rows);
        assert_eq!(
            y_rows.len(),
            a.n * rows.len(),
            "output length must be n * rows.len()"
        );
        let out = Out {
            ptr: y_rows.as_mut_ptr(),
            ld: rows.len(),
            row0: rows.start,
        };
        // SAFETY: checked above; element (i, r) lands at `i * rows.len() + r - rows.start`.
        unsafe { self.run_q(w, a, rows, out) }
    }

    /// [`Kernel::matmul_q8act_rows`] into a shared `[n][ldy]` output, element `(i, r)` at
    /// `y.add(i * ldy + r)`.
    ///
    /// # Safety
    /// `y` must be valid for writes at every such position (`i < a.rows()`, `r` in
    /// `rows`), and nothing else may access them during the call.
    pub unsafe fn matmul_q8act_rows_raw(
        self,
        w: &Matrix<'_>,
        a: &QuantActs,
        rows: Range<usize>,
        y: *mut f32,
        ldy: usize,
    ) {
        check_q(w, a, &rows);
        assert!(ldy >= rows.end || a.n <= 1, "ldy must be at least rows.end");
        let out = Out {
            ptr: y,
            ld: ldy,
            row0: 0,
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.run_q(w, a, rows, out) }
    }

    /// # Safety
    /// `check_q` passed and `out` is writable at every `(i, r)`.
    unsafe fn run_q(self, w: &Matrix<'_>, a: &QuantActs, rows: Range<usize>, out: Out) {
        assert!(
            self.available(),
            "kernel {} is not supported by this CPU",
            self.name()
        );
        if rows.is_empty() || a.n == 0 {
            return;
        }
        match self {
            // SAFETY: forwarded from our caller.
            Kernel::Scalar => unsafe { run_scalar(w, a, rows, out) },
            // SAFETY: forwarded; AVX2 + FMA + F16C asserted above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { super::avx2::run_q8act(w, a, rows, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                if std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                {
                    // SAFETY: forwarded; AVX-512F/BW/VL/VNNI checked here, the rest asserted.
                    unsafe { super::avx512::run_q8act(w, a, rows, out) }
                } else {
                    // SAFETY: forwarded; AVX-512F implies the AVX2 set here (`available`).
                    unsafe { super::avx2::run_q8act(w, a, rows, out) }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => unreachable!("not available"),
            // SAFETY: forwarded; NEON is baseline on aarch64.
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { super::neon::run_q8act(w, a, rows, out, false) },
            // SAFETY: forwarded; dotprod asserted above (`available`).
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => unsafe { super::neon::run_q8act(w, a, rows, out, true) },
            #[cfg(not(target_arch = "aarch64"))]
            Kernel::Neon | Kernel::NeonDot => unreachable!("not available"),
        }
    }
}

/// Validates shapes and planes for the int8-activation kernels.
fn check_q(w: &Matrix<'_>, a: &QuantActs, rows: &Range<usize>) {
    assert!(
        int8_supported(w.dtype),
        "no int8-activation kernel for {}",
        w.dtype.name()
    );
    assert_eq!(a.cols, w.cols, "activations must have w.cols columns");
    assert!(
        rows.start <= rows.end && rows.end <= w.rows,
        "row range {rows:?} outside 0..{}",
        w.rows
    );
    let elems = w.rows.checked_mul(w.cols).expect("matrix size overflows");
    let group = w.dtype.group().expect("quantized");
    assert!(
        w.cols.is_multiple_of(group),
        "cols not a multiple of the group"
    );
    let values = if w.dtype == DType::Q8G32 {
        elems
    } else {
        elems / 2
    };
    assert!(w.values.len() >= values, "values plane too short");
    assert!(
        w.scales.len() >= elems / group * 2,
        "scales plane too short"
    );
    if w.dtype == DType::Q4G32A {
        assert!(w.mins.len() >= elems / BLOCK * 2, "mins plane too short");
    }
}

fn f16_at(plane: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([plane[2 * i], plane[2 * i + 1]]).to_f32()
}

/// The reference: integer block sums, then `dw dx P + m s` per block summed in f32 in
/// block order.
fn dot_scalar(w: &Matrix<'_>, r: usize, a: &QuantActs, i: usize) -> f32 {
    let nb = w.cols / BLOCK;
    let group = w.dtype.group().unwrap_or(BLOCK);
    let mut acc = 0f32;
    for b in 0..nb {
        let xq = a.block(i, b);
        let blk = r * nb + b;
        let dw = f16_at(w.scales, blk * BLOCK / group);
        let dx = a.scale(i, b);
        match w.dtype {
            DType::Q8G32 => {
                let qw = &w.values[blk * BLOCK..][..BLOCK];
                let p: i32 = qw
                    .iter()
                    .zip(xq)
                    .map(|(&q, &x)| (q as i8) as i32 * x as i32)
                    .sum();
                acc += dw * dx * p as f32;
            }
            _ => {
                let qw = &w.values[blk * BLOCK / 2..][..BLOCK / 2];
                let p: i32 = qw
                    .iter()
                    .enumerate()
                    .map(|(j, &q)| {
                        (q & 0x0f) as i32 * xq[j] as i32 + (q >> 4) as i32 * xq[j + 16] as i32
                    })
                    .sum();
                let m = if w.dtype == DType::Q4G32A {
                    f16_at(w.mins, blk)
                } else {
                    -8.0 * dw
                };
                acc += dw * dx * p as f32 + m * a.sum(i, b);
            }
        }
    }
    acc
}

/// # Safety
/// `check_q` passed and `out` is writable at every `(i, r)`.
unsafe fn run_scalar(w: &Matrix<'_>, a: &QuantActs, rows: Range<usize>, out: Out) {
    for r in rows {
        for i in 0..a.n {
            // SAFETY: `i < n`, `r` in `rows`, as the caller vouched.
            unsafe { out.write(i, r, dot_scalar(w, r, a, i)) };
        }
    }
}

/// Tiling driver of the SIMD int8-activation kernels: like [`super::drive`], with
/// activation row indices instead of pointers.
///
/// # Safety
/// `out` must be writable at every `(i, r)`, `i < n`, `r` in `rows`.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(super) unsafe fn drive_q<const R: usize, const N: usize, const S: usize>(
    n: usize,
    rows: Range<usize>,
    out: Out,
    mut big: impl FnMut(&[usize; R], &[usize; N]) -> [[f32; N]; R],
    mut small: impl FnMut(&[usize; R], &[usize; S]) -> [[f32; S]; R],
) {
    let mut r0 = rows.start;
    while r0 < rows.end {
        let rr = (rows.end - r0).min(R);
        let ridx: [usize; R] = core::array::from_fn(|k| r0 + k.min(rr - 1));
        let mut i0 = 0;
        while i0 < n {
            let nn = (n - i0).min(N);
            if nn <= S && nn < N {
                let res = small(&ridx, &core::array::from_fn(|j| i0 + j.min(nn - 1)));
                // SAFETY: rows `r0..r0 + rr` lie in `rows`, activations `i0..i0 + nn` in `0..n`.
                unsafe { scatter(out, &res, r0, rr, i0, nn) };
            } else {
                let res = big(&ridx, &core::array::from_fn(|j| i0 + j.min(nn - 1)));
                // SAFETY: as above.
                unsafe { scatter(out, &res, r0, rr, i0, nn) };
            }
            i0 += N;
        }
        r0 += R;
    }
}
