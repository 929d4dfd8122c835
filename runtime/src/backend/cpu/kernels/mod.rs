//! CPU matrix kernels: `y = W x` over a (possibly quantized) weight [`Matrix`] with f32
//! activations, dequantizing the weights on the fly.
//!
//! # The exact path
//!
//! Activations stay f32 and every product is accumulated in f32, so every kernel matches
//! "[`dequantize_row`](glint_format::quant::dequantize_row), then an f32 dot product" up
//! to rounding (about 1e-5 of `sum |w x|`); no kernel quantizes the activations.
//!
//! # API
//!
//! Every entry point is a method of the [`Kernel`] that runs it: the CPU backend holds
//! its kernel as a value (no process-wide choice).
//!
//! * [`Kernel::matvec_rows`]: one activation row (decode).
//! * [`Kernel::matmul_rows`] / [`Kernel::matmul_rows_raw`]: `n` activation rows (prefill).
//!   Work is tiled so that each 32-element weight block is dequantized once, into
//!   registers, per tile of weight rows and activation rows; nothing is ever dequantized
//!   into memory beyond a block, and no call allocates.
//! * [`attn`]: the attention inner loop (one query head over an f32 or f16 KV cache),
//!   the f16 conversion on append and the SwiGLU activation, AVX-512 and NEON with a
//!   scalar reference.
//! * The `*_rows` variants compute only a range of output rows so a caller can split a
//!   matrix across threads; every row is computed the same way whatever range it is
//!   part of, so splitting never changes a single bit of the result.
//!
//! # Kernels and dispatch
//!
//! [`Kernel`] names one implementation. [`Kernel::Scalar`] is the portable reference (kept
//! forever: every SIMD kernel is tested against it). On x86-64 there are
//! [`Kernel::Avx2`] (AVX2 + FMA + F16C) and [`Kernel::Avx512`] (AVX-512F); on aarch64
//! [`Kernel::Neon`] and [`Kernel::NeonDot`]; all have hand-written kernels for every
//! dtype. [`Kernel::best`] picks the fastest from the
//! CPU features; a caller may pick any [`Kernel::available`] one by value.
//!
//! Inner loops, per dtype (why these forms: see the comments in `avx512.rs`/`avx2.rs`):
//! * int4 (all groups) on AVX-512: per block and weight row, a 16-entry table
//!   `d * [0..15] + m` is built with one FMA and the 32 nibbles are looked up with two
//!   `vpermps` (which read only the low 4 bits of each index, so no masking);
//! * int4 on AVX2: nibbles are widened and converted to f32; a single activation row uses
//!   the factored form `d * sum(q x) + m * sum(x)` (the block sum of `x` is computed
//!   inline, once per block for all rows of the tile: no scratch buffer), several rows
//!   dequantize `w = d q + m` once and reuse it;
//! * int8: `d * sum(q x)` per block (one row) or `w = d q` reused (several rows);
//! * f32/f16: plain FMA (f16 through `vcvtph2ps`).
//!
//! # aarch64 (NEON)
//!
//! `neon.rs` (behind `#[cfg(target_arch = "aarch64")]`) plugs in exactly like the x86
//! kernels: `run` picks tile sizes and calls the shared `drive` with its tile functions
//! (4-lane `float32x4_t`; int4 nibbles widened with `uxtl` and converted with `ucvtf`,
//! the factored form for one activation row as in `avx2.rs`; f16 through `fcvtl`).
//! [`Kernel::Neon`] is baseline (no detection); [`Kernel::NeonDot`] is the same exact
//! path plus `sdot` int8-activation kernels, available when
//! `std::arch::is_aarch64_feature_detected!("dotprod")`. `sdot` multiplies int8 by int8,
//! so it serves only the int8-activation entry point (`int8.rs`), not this exact path.
//! Attention, SwiGLU, the f16 cache store and the activation quantizer have NEON
//! versions too (`attn.rs`, `neon::quantize_row`), shared by both NEON kernels.

use core::ops::Range;

use glint_format::{BLOCK, DType, Matrix};

pub mod attn;
pub use int8::{QuantActs, int8_supported};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(test)]
mod tests;

/// One implementation of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable scalar reference; runs everywhere.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F (plus the AVX2 set).
    Avx512,
    /// aarch64 NEON (ARMv8.0, every 64-bit ARM core): widening multiplies for int8
    /// activations.
    Neon,
    /// aarch64 NEON with the `dotprod` extension (ARMv8.2+: Cortex-A55, A76 and later):
    /// `sdot` for int8 activations, the exact path as [`Kernel::Neon`]. A kernel of its
    /// own rather than a detection inside `Neon`, so that a dotprod CPU tests (and can
    /// run, `--kernel neon`) the ARMv8.0 kernels too, and the name says which runs.
    NeonDot,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 5] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
        Kernel::NeonDot,
    ];

    /// The name `glint` prints and accepts (`--kernel`).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
            Kernel::NeonDot => "neon+dotprod",
        }
    }

    /// Parses [`Kernel::name`].
    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name.trim())
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                Kernel::Avx2.available() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
            // NEON (Advanced SIMD) is part of the aarch64 baseline.
            Kernel::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(not(target_arch = "aarch64"))]
            Kernel::NeonDot => false,
        }
    }

    /// The CPU features the kernel choice depends on, as detected on this CPU (the
    /// reason for [`Kernel::best`]), for `glint info`.
    pub fn detected_features() -> Vec<&'static str> {
        #[cfg(target_arch = "x86_64")]
        macro_rules! has {
            ($($f:tt),*) => { [$(($f, std::arch::is_x86_feature_detected!($f))),*] };
        }
        #[cfg(target_arch = "aarch64")]
        macro_rules! has {
            ($($f:tt),*) => { [$(($f, std::arch::is_aarch64_feature_detected!($f))),*] };
        }
        #[cfg(target_arch = "x86_64")]
        let all = has!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni"
        );
        #[cfg(target_arch = "aarch64")]
        let all = has!("neon", "dotprod", "i8mm", "fp16");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let all: [(&'static str, bool); 0] = [];
        all.into_iter().filter(|f| f.1).map(|f| f.0).collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        Kernel::ALL
            .into_iter()
            .rev()
            .find(|k| k.available())
            .unwrap_or(Kernel::Scalar)
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn all_available() -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.available())
    }

    /// [`matvec_rows`] with this kernel. Panics if the CPU lacks it.
    pub fn matvec_rows(self, w: &Matrix<'_>, x: &[f32], rows: Range<usize>, y_rows: &mut [f32]) {
        check(w, x, 1, &rows);
        assert_eq!(
            y_rows.len(),
            rows.len(),
            "output length must equal the row range length"
        );
        let out = Out {
            ptr: y_rows.as_mut_ptr(),
            ld: rows.len(),
            row0: rows.start,
        };
        // SAFETY: `check` validated the planes and `x`; `y_rows` holds exactly one slot per
        // row of the range, which is where `out` maps row `r` (`r - rows.start`), and the
        // exclusive borrow keeps anyone else from touching it.
        unsafe { self.run(w, x, 1, rows, out) }
    }

    /// [`matmul_rows`] with this kernel. Panics if the CPU lacks it.
    pub fn matmul_rows(
        self,
        w: &Matrix<'_>,
        x: &[f32],
        n: usize,
        rows: Range<usize>,
        y_rows: &mut [f32],
    ) {
        check(w, x, n, &rows);
        assert_eq!(
            y_rows.len(),
            n * rows.len(),
            "output length must be n * rows.len()"
        );
        let out = Out {
            ptr: y_rows.as_mut_ptr(),
            ld: rows.len(),
            row0: rows.start,
        };
        // SAFETY: as in `matvec_rows`; element (i, r) lands at `i * rows.len() + r -
        // rows.start < n * rows.len()`.
        unsafe { self.run(w, x, n, rows, out) }
    }

    /// [`matmul_rows_raw`] with this kernel. Panics if the CPU lacks it.
    ///
    /// # Safety
    /// As for [`matmul_rows_raw`].
    pub unsafe fn matmul_rows_raw(
        self,
        w: &Matrix<'_>,
        x: &[f32],
        n: usize,
        rows: Range<usize>,
        y: *mut f32,
        ldy: usize,
    ) {
        check(w, x, n, &rows);
        assert!(ldy >= rows.end || n <= 1, "ldy must be at least rows.end");
        let out = Out {
            ptr: y,
            ld: ldy,
            row0: 0,
        };
        // SAFETY: the caller guarantees `y` is writable at `i * ldy + r` for `i < n`,
        // `r` in `rows`, and that nothing else accesses those elements meanwhile.
        unsafe { self.run(w, x, n, rows, out) }
    }

    /// Runs the kernel after asserting the CPU supports it.
    ///
    /// # Safety
    /// `check(w, x, n, &rows)` must have passed, and `out` must be writable at every
    /// `(i, r)` for `i < n`, `r` in `rows`.
    unsafe fn run(self, w: &Matrix<'_>, x: &[f32], n: usize, rows: Range<usize>, out: Out) {
        assert!(
            self.available(),
            "kernel {} is not supported by this CPU",
            self.name()
        );
        if rows.is_empty() || n == 0 {
            return;
        }
        match self {
            // SAFETY: forwarded from our caller.
            Kernel::Scalar => unsafe { scalar::run(w, x, n, rows, out) },
            // SAFETY: forwarded from our caller; the CPU features were asserted above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::run(w, x, n, rows, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::run(w, x, n, rows, out) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => unreachable!("not available"),
            // SAFETY: forwarded from our caller; NEON is baseline on aarch64 and the
            // exact path uses no extension (dotprod only serves int8 activations).
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon | Kernel::NeonDot => unsafe { neon::run(w, x, n, rows, out) },
            #[cfg(not(target_arch = "aarch64"))]
            Kernel::Neon | Kernel::NeonDot => unreachable!("not available"),
        }
    }
}

/// Bytes of the values plane per element, times two (int4 packs two per byte).
fn value_bytes_x2(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 8,
        DType::F16 => 4,
        DType::Q8G32 => 2,
        DType::Q4G32A | DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => 1,
    }
}

/// Validates shapes and plane lengths so the kernels can read through raw pointers.
fn check(w: &Matrix<'_>, x: &[f32], n: usize, rows: &Range<usize>) {
    assert!(
        rows.start <= rows.end && rows.end <= w.rows,
        "row range {rows:?} outside 0..{}",
        w.rows
    );
    let elems = w.rows.checked_mul(w.cols).expect("matrix size overflows");
    assert_eq!(
        Some(x.len()),
        n.checked_mul(w.cols),
        "x must be [n][w.cols]"
    );
    let values = elems
        .checked_mul(value_bytes_x2(w.dtype))
        .expect("matrix size overflows")
        / 2;
    assert!(w.values.len() >= values, "values plane too short");
    if let Some(group) = w.dtype.group() {
        assert!(
            w.cols.is_multiple_of(group) && w.cols.is_multiple_of(BLOCK),
            "cols not a multiple of the group"
        );
        assert!(
            w.scales.len() >= elems / group * 2,
            "scales plane too short"
        );
        if w.dtype == DType::Q4G32A {
            assert!(w.mins.len() >= elems / BLOCK * 2, "mins plane too short");
        }
    }
}

/// Software prefetch of the next tile of weight rows of a quantized matrix, for the SIMD
/// kernels. Rows of small matrices are short (576 int4 columns are 360 bytes), so a tile
/// of rows is several short interleaved streams that the hardware prefetchers barely pick
/// up before they end; from DRAM that halved the int8 output head's throughput. The
/// tile after this one is contiguous in every plane, so its values are prefetched a
/// slice per block while this tile runs, and its scales and minimums up front. Only
/// matvec tiles prefetch per block: matmul tiles are compute-bound and revisit the same
/// weight rows for every activation tile (measured: per-block prefetches there cost 20%).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct NextTile {
    /// Start of the next tile's values (possibly past the end of the plane: only
    /// prefetched, never read).
    values: *const u8,
    /// Value bytes of the next tile per block of this one.
    slice: usize,
}

#[cfg(target_arch = "x86_64")]
impl NextTile {
    /// For a tile of `rows` rows of `w` whose last row is `last`; prefetches the scales
    /// and minimums of the next `rows` rows right away.
    #[inline(always)]
    fn new(w: &Matrix<'_>, last: usize, rows: usize) -> Self {
        let group = w.dtype.group().unwrap_or(BLOCK);
        let nb = (w.cols / BLOCK).max(1);
        let row_bytes = w.cols * value_bytes_x2(w.dtype) / 2;
        let scale_bytes = w.cols / group * 2;
        let min_bytes = if w.dtype == DType::Q4G32A {
            w.cols / BLOCK * 2
        } else {
            0
        };
        let last = last + (PREFETCH_TILES - 1) * rows;
        for (plane, bytes) in [(w.scales, scale_bytes), (w.mins, min_bytes)] {
            let start = plane.as_ptr().wrapping_add((last + 1) * bytes);
            for off in (0..rows * bytes).step_by(64) {
                prefetch(start.wrapping_add(off));
            }
        }
        Self {
            values: w.values.as_ptr().wrapping_add((last + 1) * row_bytes),
            slice: rows * row_bytes / nb,
        }
    }

    /// Call once per block `blk` of the current tile.
    #[inline(always)]
    fn block(self, blk: usize) {
        let at = self.values.wrapping_add(blk * self.slice);
        for off in (0..self.slice).step_by(64) {
            prefetch(at.wrapping_add(off));
        }
    }
}

/// How many tiles ahead [`NextTile`] prefetches.
#[cfg(target_arch = "x86_64")]
const PREFETCH_TILES: usize = 1;

/// Hints the cache line holding `p` into L1; never faults, whatever `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: a prefetch is only a hint: it never faults nor dereferences in the
    // language's sense, for any address. SSE is part of the x86-64 baseline.
    unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
}

/// Cache-line-aligned stack storage: the SIMD kernels spill per-chunk scales into such
/// arrays and broadcast them back per block; an unaligned 32- or 64-byte store that
/// straddles two cache lines (and the loads that follow it) is several times slower.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Aligned<T>(T);

/// Where results go: element `(i, r)` (activation row `i`, weight row `r`) is written to
/// `ptr + i * ld + (r - row0)`.
#[derive(Clone, Copy, Debug)]
struct Out {
    ptr: *mut f32,
    ld: usize,
    row0: usize,
}

impl Out {
    /// # Safety
    /// `(i, r)` must be one of the positions the creator of `self` vouched for.
    #[inline]
    unsafe fn write(self, i: usize, r: usize, v: f32) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.ptr.add(i * self.ld + (r - self.row0)) = v }
    }

    /// Writes `vals[..rr]` to rows `r0..r0 + rr` of activation 0 (adjacent elements).
    /// A full tile is one fixed-size copy: written element by element, the loop became a
    /// `memcpy` call per tile (1.6% of a decode step).
    ///
    /// # Safety
    /// Every `(0, r0 + k)`, `k < rr <= R`, must be a position the creator vouched for.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    unsafe fn write_run<const R: usize>(self, r0: usize, vals: &[f32; R], rr: usize) {
        // SAFETY: by the caller's contract; activation 0's rows are adjacent.
        unsafe {
            let dst = self.ptr.add(r0 - self.row0);
            if rr == R {
                dst.cast::<[f32; R]>().write_unaligned(*vals);
            } else {
                for (k, &v) in vals.iter().enumerate().take(rr) {
                    *dst.add(k) = v;
                }
            }
        }
    }
}

/// Shared tiling driver of the SIMD kernels: walks `rows` in tiles of `R` weight rows and,
/// for each, the `n` activation rows in tiles of `N` through `big`; a remainder of at
/// most `S` activation rows goes through `small` instead (a cheaper `[R][S]` tile), a
/// larger one through `big`. Partial tiles repeat their last row (weight or activation)
/// to fill the tile and drop the duplicate results, so tile functions handle full tiles
/// only and compute each (row, activation) pair the same way regardless of its
/// neighbours. Activation tiles are the inner loop, so a tile's weight rows stay in L1
/// while all activation rows go past them.
///
/// # Safety
/// `x` must hold `n * cols` elements and `out` must be writable at every `(i, r)`,
/// `i < n`, `r` in `rows`.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
unsafe fn drive<const R: usize, const N: usize, const S: usize>(
    x: &[f32],
    cols: usize,
    n: usize,
    rows: Range<usize>,
    out: Out,
    mut big: impl FnMut(&[usize; R], &[*const f32; N]) -> [[f32; N]; R],
    mut small: impl FnMut(&[usize; R], &[*const f32; S]) -> [[f32; S]; R],
) {
    /// Activation row pointers `i0..i0 + len`, the last repeated to fill `M` slots.
    fn acts<const M: usize>(x: &[f32], cols: usize, i0: usize, len: usize) -> [*const f32; M] {
        core::array::from_fn(|j| x[(i0 + j.min(len - 1)) * cols..].as_ptr())
    }
    let mut r0 = rows.start;
    while r0 < rows.end {
        let rr = (rows.end - r0).min(R);
        let ridx: [usize; R] = core::array::from_fn(|k| r0 + k.min(rr - 1));
        let mut i0 = 0;
        while i0 < n {
            let nn = (n - i0).min(N);
            if nn <= S && nn < N {
                let res = small(&ridx, &acts::<S>(x, cols, i0, nn));
                // SAFETY: rows `r0..r0 + rr` lie in `rows`, activations `i0..i0 + nn` in `0..n`.
                unsafe { scatter(out, &res, r0, rr, i0, nn) };
            } else {
                let res = big(&ridx, &acts::<N>(x, cols, i0, nn));
                // SAFETY: as above.
                unsafe { scatter(out, &res, r0, rr, i0, nn) };
            }
            i0 += N;
        }
        r0 += R;
    }
}

/// Writes the `rr x nn` valid corner of a tile's results: rows `r0..r0 + rr`,
/// activations `i0..i0 + nn` (tiles are padded by repeating the last row/activation).
///
/// # Safety
/// `out` must be writable at `(i0 + j, r0 + k)` for `j < nn`, `k < rr`.
unsafe fn scatter<const R: usize, const M: usize>(
    out: Out,
    res: &[[f32; M]; R],
    r0: usize,
    rr: usize,
    i0: usize,
    nn: usize,
) {
    for (k, row) in res.iter().enumerate().take(rr) {
        for (j, &v) in row.iter().enumerate().take(nn) {
            // SAFETY: in bounds by the caller's contract.
            unsafe { out.write(i0 + j, r0 + k, v) };
        }
    }
}
