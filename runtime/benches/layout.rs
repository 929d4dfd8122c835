//! Planar vs interleaved int4 storage (docs/FORMAT.md, "Why this layout"), measured.
//!
//! Two single-thread AVX-512 matrix-vector kernels `y = W x` (f32 activations) for `W` in
//! Q4_1 math (`w = d * q + m`, group 32), identical in arithmetic, instruction sequence
//! and tiling (4 rows at a time, one 32-element block per step), differing only in where
//! they read the bytes from:
//!
//! - `planar`: the `.glint` planes (all nibbles, then all f16 scales, then all f16 mins),
//!   exactly as `quantize(DType::Q4G32A, ..)` writes them and `Matrix::from_bytes` splits.
//! - `interleaved`: GGUF `block_q4_1` (20 bytes: f16 d, f16 m, 16 nibble bytes), built
//!   from the same planes.
//!
//! Plus a scalar version of each for reference, and a `touch` probe per layout that makes
//! the same loads (in storage order) with XORs instead of arithmetic: what the memory
//! system alone allows for each layout. Throughput is weight bytes streamed
//! (20 bytes per 32 weights for both layouts; the planar padding is not counted).
//!
//! `cargo bench -p glint-runtime --bench layout -- --warm-up-time 1 --measurement-time 3`
//!
//! The small case (1536x576, 0.55 MB) stays in L2; the large one (262144x576, 94 MB) is
//! several times any L3 here, so it streams from DRAM every iteration.
//! Self-contained: uses only `glint_format`, not the runtime's kernels.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use glint_format::quant::{Planes, dequantize_row, quantize};
use glint_format::{BLOCK, DType, Matrix};
use half::f16;
use std::hint::black_box;

/// Bytes of one GGUF `block_q4_1`.
const Q4_1_BLOCK: usize = 20;

/// Rows quantized per `quantize` call when building the large matrix (blocks are
/// independent, so the concatenated planes are byte-identical to one whole-tensor call,
/// without the 600 MB f32 source).
const CHUNK_ROWS: usize = 4096;

use glint_format::quant::test_values as sample;

/// Where a kernel finds block `i = row * blocks + b`: its 16 nibble bytes, f16 d and m.
trait Layout: Sync {
    fn rows(&self) -> usize;
    fn blocks(&self) -> usize;
    /// # Safety
    /// `i < rows * blocks`.
    unsafe fn nibbles(&self, i: usize) -> *const u8;
    /// # Safety
    /// `i < rows * blocks`.
    unsafe fn d(&self, i: usize) -> u16;
    /// # Safety
    /// `i < rows * blocks`.
    unsafe fn m(&self, i: usize) -> u16;
}

/// The `.glint` planes.
struct Planar<'a> {
    rows: usize,
    blocks: usize,
    values: &'a [u8],
    scales: &'a [u8],
    mins: &'a [u8],
}

impl<'a> Planar<'a> {
    fn new(m: &Matrix<'a>) -> Self {
        let blocks = m.cols / BLOCK;
        let n = m.rows * blocks;
        assert_eq!(m.dtype, DType::Q4G32A);
        assert!(m.values.len() >= n * 16 && m.scales.len() >= n * 2 && m.mins.len() >= n * 2);
        Self {
            rows: m.rows,
            blocks,
            values: m.values,
            scales: m.scales,
            mins: m.mins,
        }
    }
}

impl Layout for Planar<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn blocks(&self) -> usize {
        self.blocks
    }
    #[inline(always)]
    unsafe fn nibbles(&self, i: usize) -> *const u8 {
        unsafe { self.values.as_ptr().add(16 * i) }
    }
    #[inline(always)]
    unsafe fn d(&self, i: usize) -> u16 {
        unsafe {
            self.scales
                .as_ptr()
                .add(2 * i)
                .cast::<u16>()
                .read_unaligned()
        }
    }
    #[inline(always)]
    unsafe fn m(&self, i: usize) -> u16 {
        unsafe { self.mins.as_ptr().add(2 * i).cast::<u16>().read_unaligned() }
    }
}

/// GGUF `block_q4_1` array.
struct Interleaved {
    rows: usize,
    blocks: usize,
    bytes: Vec<u8>,
}

impl Interleaved {
    /// Re-packs the planes of `m` into a freshly allocated array of 20-byte blocks.
    fn new(m: &Matrix<'_>) -> Self {
        let p = Planar::new(m);
        let n = p.rows * p.blocks;
        let mut bytes = Vec::with_capacity(n * Q4_1_BLOCK);
        for i in 0..n {
            bytes.extend_from_slice(&p.scales[2 * i..2 * i + 2]);
            bytes.extend_from_slice(&p.mins[2 * i..2 * i + 2]);
            bytes.extend_from_slice(&p.values[16 * i..16 * i + 16]);
        }
        Self {
            rows: p.rows,
            blocks: p.blocks,
            bytes,
        }
    }
}

impl Layout for Interleaved {
    fn rows(&self) -> usize {
        self.rows
    }
    fn blocks(&self) -> usize {
        self.blocks
    }
    #[inline(always)]
    unsafe fn nibbles(&self, i: usize) -> *const u8 {
        unsafe { self.bytes.as_ptr().add(Q4_1_BLOCK * i + 4) }
    }
    #[inline(always)]
    unsafe fn d(&self, i: usize) -> u16 {
        unsafe {
            self.bytes
                .as_ptr()
                .add(Q4_1_BLOCK * i)
                .cast::<u16>()
                .read_unaligned()
        }
    }
    #[inline(always)]
    unsafe fn m(&self, i: usize) -> u16 {
        unsafe {
            self.bytes
                .as_ptr()
                .add(Q4_1_BLOCK * i + 2)
                .cast::<u16>()
                .read_unaligned()
        }
    }
}

/// Per-block sums of `x` (the `m * sum(x)` term), shared by every row.
fn block_sums(x: &[f32], sx: &mut [f32]) {
    for (s, c) in sx.iter_mut().zip(x.chunks_exact(BLOCK)) {
        *s = c.iter().sum();
    }
}

/// Scalar reference kernel: `y[r] = sum_b d * sum_j(q * x) + m * sum(x_b)`.
fn matvec_scalar<L: Layout>(w: &L, x: &[f32], sx: &mut [f32], y: &mut [f32]) {
    let nb = w.blocks();
    assert!(x.len() == nb * BLOCK && sx.len() == nb && y.len() == w.rows());
    block_sums(x, sx);
    for (r, yr) in y.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (b, (xb, &s)) in x.chunks_exact(BLOCK).zip(sx.iter()).enumerate() {
            let i = r * nb + b;
            // SAFETY: i < rows * blocks (asserted shapes).
            let (q, d, m) = unsafe {
                (
                    std::slice::from_raw_parts(w.nibbles(i), 16),
                    f16::from_bits(w.d(i)).to_f32(),
                    f16::from_bits(w.m(i)).to_f32(),
                )
            };
            let mut dot = 0f32;
            for j in 0..16 {
                dot += (q[j] & 0x0f) as f32 * xb[j] + (q[j] >> 4) as f32 * xb[j + 16];
            }
            acc += d * dot + m * s;
        }
        *yr = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, Layout, block_sums};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma")
    }

    /// Four f16 bit patterns to f32 lanes `[a, b, c, d]`.
    #[inline(always)]
    fn f16x4(a: u16, b: u16, c: u16, d: u16) -> __m128 {
        let bits = a as u64 | (b as u64) << 16 | (c as u64) << 32 | (d as u64) << 48;
        // SAFETY: callers are compiled with f16c (`matvec` below).
        unsafe { _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64)) }
    }

    /// 4 rows per step, one block per inner step: load 16 nibble bytes per row, split
    /// low/high nibbles, widen to 2x16 f32, FMA with x, `acc += d * sum(q x)`, and
    /// `accm += m * sum(x_b)` for the 4 rows in one 128-bit FMA.
    /// Requires `rows % 4 == 0` (checked).
    #[target_feature(enable = "avx512f,f16c,fma")]
    pub fn matvec<L: Layout>(w: &L, x: &[f32], sx: &mut [f32], y: &mut [f32]) {
        let nb = w.blocks();
        let rows = w.rows();
        assert!(
            x.len() == nb * BLOCK && sx.len() == nb && y.len() == rows && rows.is_multiple_of(4)
        );
        block_sums(x, sx);
        let low = _mm_set1_epi8(0x0f);
        for r0 in (0..rows).step_by(4) {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut accm = _mm_setzero_ps();
            let base = [r0 * nb, (r0 + 1) * nb, (r0 + 2) * nb, (r0 + 3) * nb];
            for b in 0..nb {
                // SAFETY: b < nb and r0 + 3 < rows, so every block index is in range;
                // x holds nb * 32 floats.
                unsafe {
                    let xp = x.as_ptr().add(b * BLOCK);
                    let xlo = _mm512_loadu_ps(xp);
                    let xhi = _mm512_loadu_ps(xp.add(16));
                    let d = f16x4(
                        w.d(base[0] + b),
                        w.d(base[1] + b),
                        w.d(base[2] + b),
                        w.d(base[3] + b),
                    );
                    let m = f16x4(
                        w.m(base[0] + b),
                        w.m(base[1] + b),
                        w.m(base[2] + b),
                        w.m(base[3] + b),
                    );
                    accm = _mm_fmadd_ps(m, _mm_set1_ps(*sx.get_unchecked(b)), accm);
                    let dv = [
                        _mm512_broadcastss_ps(d),
                        _mm512_broadcastss_ps(_mm_permute_ps::<0b01_01_01_01>(d)),
                        _mm512_broadcastss_ps(_mm_permute_ps::<0b10_10_10_10>(d)),
                        _mm512_broadcastss_ps(_mm_permute_ps::<0b11_11_11_11>(d)),
                    ];
                    for k in 0..4 {
                        let q = _mm_loadu_si128(w.nibbles(base[k] + b).cast::<__m128i>());
                        let lo = _mm_and_si128(q, low);
                        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
                        let qlo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo));
                        let qhi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
                        let qx = _mm512_fmadd_ps(qlo, xlo, _mm512_mul_ps(qhi, xhi));
                        acc[k] = _mm512_fmadd_ps(dv[k], qx, acc[k]);
                    }
                }
            }
            let mut ms = [0f32; 4];
            // SAFETY: ms holds 4 floats.
            unsafe { _mm_storeu_ps(ms.as_mut_ptr(), accm) };
            for k in 0..4 {
                y[r0 + k] = _mm512_reduce_add_ps(acc[k]) + ms[k];
            }
        }
    }

    /// Bandwidth probe, not a kernel: one pass over every block in storage order (a
    /// linear scan of the interleaved array; three sequential streams at 16:2:2 bytes per
    /// block for the planes), making the loads a kernel makes (16 nibble bytes, d, m) with
    /// XORs instead of arithmetic, so it runs at the speed of the memory system. Returns
    /// a checksum that is the same for every layout of the same matrix.
    #[target_feature(enable = "avx512f")]
    pub fn touch<L: Layout>(w: &L) -> u64 {
        let mut v = _mm_setzero_si128();
        let mut s = 0u64;
        for i in 0..w.rows() * w.blocks() {
            // SAFETY: i < rows * blocks.
            unsafe {
                v = _mm_xor_si128(v, _mm_loadu_si128(w.nibbles(i).cast::<__m128i>()));
                s ^= w.d(i) as u64 | (w.m(i) as u64) << 16;
            }
        }
        let mut lanes = [0u64; 2];
        // SAFETY: lanes holds 16 bytes.
        unsafe { _mm_storeu_si128(lanes.as_mut_ptr().cast(), v) };
        lanes[0] ^ lanes[1].rotate_left(32) ^ s
    }
}

/// Builds a `[rows, cols]` Q4G32A tensor through `quantize` (in row chunks) and returns
/// its bytes as the file stores them.
fn build(rows: usize, cols: usize) -> Vec<u8> {
    let mut planes = Planes::default();
    let mut r = 0;
    while r < rows {
        let n = CHUNK_ROWS.min(rows - r);
        let data = sample(n * cols, 9 ^ (r as u32).wrapping_mul(0x9e37_79b9));
        let bytes = quantize(DType::Q4G32A, &data);
        let m = Matrix::from_bytes(DType::Q4G32A, n, cols, &bytes).expect("chunk");
        planes.values.extend_from_slice(m.values);
        planes.scales.extend_from_slice(m.scales);
        planes.mins.extend_from_slice(m.mins);
        r += n;
    }
    planes.into_bytes(DType::Q4G32A, (rows * cols) as u64)
}

/// Every row against `dequantize_row` + dot (f64), within 1e-4 of the row's `sum |w x|`.
fn check(name: &str, w: &Matrix<'_>, x: &[f32], y: &[f32]) {
    let mut row = vec![0f32; w.cols];
    for (r, &got) in y.iter().enumerate() {
        dequantize_row(w, r, &mut row);
        let (dot, mag) = row.iter().zip(x).fold((0f64, 0f64), |(s, a), (&w, &x)| {
            let p = w as f64 * x as f64;
            (s + p, a + p.abs())
        });
        let err = (got as f64 - dot).abs();
        assert!(
            err <= 1e-4 * mag.max(f64::MIN_POSITIVE),
            "{name} row {r}: {got} vs reference {dot} (scale {mag})"
        );
    }
}

fn layout(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    let simd = avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    if !simd {
        eprintln!("layout: AVX-512F/F16C/FMA not available, skipping the SIMD kernels");
    }
    for (rows, cols) in [(1536, 576), (262_144, 576)] {
        let bytes = build(rows, cols);
        let w = Matrix::from_bytes(DType::Q4G32A, rows, cols, &bytes).expect("matrix");
        let planar = Planar::new(&w);
        let inter = Interleaved::new(&w);
        let x = sample(cols, 4);
        let mut sx = vec![0f32; cols / BLOCK];
        let mut y = vec![0f32; rows];

        matvec_scalar(&planar, &x, &mut sx, &mut y);
        check("scalar planar", &w, &x, &y);
        matvec_scalar(&inter, &x, &mut sx, &mut y);
        check("scalar interleaved", &w, &x, &y);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the features `matvec` enables were detected above.
            unsafe { avx512::matvec(&planar, &x, &mut sx, &mut y) };
            check("avx512 planar", &w, &x, &y);
            unsafe { avx512::matvec(&inter, &x, &mut sx, &mut y) };
            check("avx512 interleaved", &w, &x, &y);
            // SAFETY: as above.
            let sums = unsafe { (avx512::touch(&planar), avx512::touch(&inter)) };
            assert_eq!(sums.0, sums.1, "touch checksums differ");
        }

        let streamed = (rows * cols / BLOCK * Q4_1_BLOCK) as u64;
        let mut g = c.benchmark_group(format!("q4g32a_{rows}x{cols}"));
        g.throughput(Throughput::Bytes(streamed));
        #[cfg(target_arch = "x86_64")]
        if simd {
            g.bench_function(BenchmarkId::new("avx512", "planar"), |b| {
                // SAFETY: features detected above.
                b.iter(|| unsafe { avx512::matvec(&planar, black_box(&x), &mut sx, &mut y) })
            });
            g.bench_function(BenchmarkId::new("avx512", "interleaved"), |b| {
                // SAFETY: features detected above.
                b.iter(|| unsafe { avx512::matvec(&inter, black_box(&x), &mut sx, &mut y) })
            });
            g.bench_function(BenchmarkId::new("touch", "planar"), |b| {
                // SAFETY: features detected above.
                b.iter(|| unsafe { avx512::touch(black_box(&planar)) })
            });
            g.bench_function(BenchmarkId::new("touch", "interleaved"), |b| {
                // SAFETY: features detected above.
                b.iter(|| unsafe { avx512::touch(black_box(&inter)) })
            });
        }
        g.bench_function(BenchmarkId::new("scalar", "planar"), |b| {
            b.iter(|| matvec_scalar(&planar, black_box(&x), &mut sx, &mut y))
        });
        g.bench_function(BenchmarkId::new("scalar", "interleaved"), |b| {
            b.iter(|| matvec_scalar(&inter, black_box(&x), &mut sx, &mut y))
        });
        g.finish();
        black_box(&y);
    }
}

criterion_group!(benches, layout);
criterion_main!(benches);
