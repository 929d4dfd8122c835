//! Attention inner loops: the query heads of one KV group against `len` cached keys and
//! values, `out = softmax(scale * q . K[0..len]) V[0..len]` per head (each key and value
//! row read once for the whole group), with the cache in f32, f16 or int8
//! with one f32 scale per 32-element block ([`KvElem`], [`KvRows`]), plus the f32 ->
//! cache-element conversions used on append ([`store`], [`store_q8`]).
//!
//! [`attend`] runs on the kernel it is given: AVX-512 (head dims a
//! multiple of 16, up to 256) has a hand-written loop (zmm dot products, a vectorised
//! `exp` built on `vscalefps`, f16 read through `vcvtph2ps`); on aarch64 the NEON
//! kernels (head dims a multiple of 16) have one of their own (4-lane pieces, the same
//! `exp` with `2^n` built in the exponent bits, f16 through `fcvtl`, written with
//! `fcvtn`); everything else runs the scalar reference [`attend_scalar`], which every
//! SIMD path is tested against.
//!
//! Also here, sharing the vectorised `exp`: the SwiGLU activation [`silu_mul`].

use glint_format::BLOCK;
use half::f16;

use super::Kernel;

/// An element type of the KV cache: `f32` or `half::f16`.
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// Whether the type is IEEE binary16 (read with `vcvtph2ps`).
    const F16: bool;
    /// Whether the type is int8 scaled per 32-element block ([`KvRows::scales`]).
    const I8: bool = false;
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// Rounds from f32 (to nearest even).
    fn from_f32(v: f32) -> Self;
}

impl KvElem for f32 {
    const F16: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl KvElem for f16 {
    const F16: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl KvElem for i8 {
    const F16: bool = false;
    const I8: bool = true;
    /// The integer; its block scale is applied by [`KvRows::at`].
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    /// Rounds to the nearest integer in `-127..=127` (unscaled: see [`store_q8`]).
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v.round().clamp(-127.0, 127.0) as i8
    }
}

/// One KV head's cached keys (or values) in a layer: position `p`, element `i` is
/// `data[p * stride + i]`, times `scales[(p * stride + i) / 32]` for int8 (`scales` is
/// empty for f32 and f16). For int8, `stride` and the head's offset into the row are
/// multiples of [`BLOCK`].
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a, T> {
    /// The elements, from the head's first element at position 0.
    pub data: &'a [T],
    /// Block scales (int8 only), from the head's first block at position 0.
    pub scales: &'a [f32],
    /// Elements from one position to the next.
    pub stride: usize,
}

impl<T: KvElem> KvRows<'_, T> {
    /// Element `i` of position `p`, widened (and scaled) to f32.
    #[inline(always)]
    pub fn at(&self, p: usize, i: usize) -> f32 {
        let j = p * self.stride + i;
        let v = self.data[j].to_f32();
        if T::I8 { v * self.scales[j / BLOCK] } else { v }
    }

    /// Whether positions `0..len` of a head of `hd` elements are all there.
    fn holds(&self, len: usize, hd: usize) -> bool {
        let need = (len - 1) * self.stride + hd;
        self.data.len() >= need
            && (!T::I8
                || (self.stride.is_multiple_of(BLOCK)
                    && hd.is_multiple_of(BLOCK)
                    && self.scales.len() >= need.div_ceil(BLOCK)))
    }
}

/// Quantizes `src` to int8 per 32-element block with the activations' rule
/// (llama.cpp's Q8_0, with an f32 scale): `scales[b] = max |x| / 127`, `dst[i] =
/// round(src[i] / scales[b])`. `src.len()` must be a multiple of 32.
pub fn store_q8(dst: &mut [i8], scales: &mut [f32], src: &[f32]) {
    assert!(src.len().is_multiple_of(BLOCK) && dst.len() == src.len());
    assert_eq!(scales.len(), src.len() / BLOCK);
    for ((d, s), x) in dst
        .chunks_exact_mut(BLOCK)
        .zip(scales.iter_mut())
        .zip(src.chunks_exact(BLOCK))
    {
        *s = super::int8::quantize_block(x, d);
    }
}

/// `dst[i] = T::from_f32(src[i])` (round to nearest even for f16).
/// Float caches only: int8 rows need their block scales ([`store_q8`]).
pub fn store<T: KvElem>(kernel: Kernel, dst: &mut [T], src: &[f32]) {
    assert!(!T::I8, "int8 cache rows are written with store_q8");
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if T::F16 && kernel == Kernel::Avx512 && kernel.available() {
        // SAFETY: AVX-512F (and F16C) checked by `available`; lengths asserted equal;
        // `T` is `f16` (2 bytes, `F16`).
        unsafe { avx512::store_f16(dst.as_mut_ptr().cast(), src) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if T::F16 && neon_on(kernel) {
        // SAFETY: NEON checked by `neon_on`; lengths asserted equal; `T` is `f16` (2
        // bytes, `F16`).
        unsafe { neon::store_f16(dst.as_mut_ptr().cast(), src) };
        return;
    }
    let _ = kernel;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::from_f32(s);
    }
}

/// Whether `kernel` is a NEON one this CPU runs (both share the attention, SwiGLU and
/// f16 kernels: none of them multiplies int8 by int8).
#[cfg(target_arch = "aarch64")]
fn neon_on(kernel: Kernel) -> bool {
    (kernel == Kernel::Neon || kernel == Kernel::NeonDot) && kernel.available()
}

/// `g[i] = silu(g[i]) * u[i]` with `silu(x) = x / (1 + exp(-x))` (SwiGLU), on `kernel`
/// (AVX-512 or NEON where it applies, else scalar).
pub fn silu_mul(kernel: Kernel, g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len());
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.available() {
        // SAFETY: AVX-512F checked; lengths equal.
        unsafe { avx512::silu_mul(g, u) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if neon_on(kernel) {
        // SAFETY: NEON checked; lengths equal.
        unsafe { neon::silu_mul(g, u) };
        return;
    }
    let _ = kernel;
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// One attention call: `heads` query heads sharing one KV head (grouped-query
/// attention). For each head `g`, `out_g = sum_p softmax_p(scale * q_g . k_p) v_p` over
/// `p < len`, where `q_g` and `out_g` are the `g`-th `hd`-element pieces of `q` and
/// `out` and `k_p` is position `p` of `keys` (likewise `v_p`).
#[derive(Clone, Copy, Debug)]
pub struct AttendJob<'a, T> {
    /// The query heads, `heads * hd` elements.
    pub q: &'a [f32],
    /// Query heads in `q`.
    pub heads: usize,
    /// The KV head's keys.
    pub keys: KvRows<'a, T>,
    /// The KV head's values.
    pub values: KvRows<'a, T>,
    /// Positions attended to.
    pub len: usize,
    /// Multiplies every score (`1 / sqrt(hd)`).
    pub scale: f32,
}

/// Runs `job` on `kernel` (AVX-512 or NEON where it applies, else the scalar reference) into
/// `out` (`q.len()` elements); `scores` is scratch of at least `heads * len`.
pub fn attend<T: KvElem>(
    kernel: Kernel,
    job: &AttendJob<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let AttendJob {
        q,
        heads,
        keys,
        values,
        len,
        scale,
    } = *job;
    assert!(
        heads >= 1 && q.len().is_multiple_of(heads),
        "q holds whole heads"
    );
    let hd = q.len() / heads;
    assert_eq!(out.len(), q.len());
    assert!(len >= 1 && scores.len() >= heads * len && keys.stride >= hd);
    assert_eq!(keys.stride, values.stride, "keys and values share a layout");
    assert!(
        keys.holds(len, hd) && values.holds(len, hd),
        "cache too short"
    );
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && kernel.available() && hd.is_multiple_of(16) {
        // Heads in runs of up to 4 (at most 16 accumulators of the values), key rows
        // `P` at a time (`P * V = 16` registers).
        let run = |v: usize| (16 / v).clamp(1, 4);
        macro_rules! go {
            ($v:literal, $p:literal) => {{
                let mut g = 0;
                while g < heads {
                    let n = (heads - g).min(run($v));
                    let (qg, og) = (q[g * hd..].as_ptr(), out[g * hd..].as_mut_ptr());
                    let sc = scores.as_mut_ptr();
                    // SAFETY: AVX-512F checked; shapes asserted above (`holds`); heads
                    // `g..g + n` are in `q` and `out`, `n * len` scores in `scores`.
                    unsafe {
                        match n {
                            1 => {
                                avx512::attend::<T, $v, 1, $p>(qg, keys, values, len, scale, sc, og)
                            }
                            2 => {
                                avx512::attend::<T, $v, 2, $p>(qg, keys, values, len, scale, sc, og)
                            }
                            3 => {
                                avx512::attend::<T, $v, 3, $p>(qg, keys, values, len, scale, sc, og)
                            }
                            _ => {
                                avx512::attend::<T, $v, 4, $p>(qg, keys, values, len, scale, sc, og)
                            }
                        }
                    }
                    g += n;
                }
                return;
            }};
        }
        match hd / 16 {
            2 => go!(2, 4),
            4 => go!(4, 4),
            8 => go!(8, 2),
            16 => go!(16, 1),
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if neon_on(kernel) && hd.is_multiple_of(16) {
        // Heads in runs of up to 4: up to 4 accumulators per head (the 16-element piece
        // of the values), so 16 of the 32 registers, plus the 4 of the row's piece.
        let mut g = 0;
        while g < heads {
            let n = (heads - g).min(4);
            let (sc, og) = (scores.as_mut_ptr(), out[g * hd..].as_mut_ptr());
            // SAFETY: NEON checked; shapes asserted above (`holds`, `hd` a multiple of
            // 16); heads `g..g + n` are in `q` and `out`, `n * len` scores in `scores`.
            unsafe {
                match n {
                    1 => neon::attend::<T, 1>(job, g, sc, og),
                    2 => neon::attend::<T, 2>(job, g, sc, og),
                    3 => neon::attend::<T, 3>(job, g, sc, og),
                    _ => neon::attend::<T, 4>(job, g, sc, og),
                }
            }
            g += n;
        }
        return;
    }
    let _ = (kernel, scale);
    attend_scalar(job, scores, out);
}

/// The reference of [`attend`]: one head after the other.
pub fn attend_scalar<T: KvElem>(job: &AttendJob<'_, T>, scores: &mut [f32], out: &mut [f32]) {
    let AttendJob {
        q,
        heads,
        keys,
        values,
        len,
        scale,
    } = *job;
    let hd = q.len() / heads;
    for (q, out) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        let mut max = f32::NEG_INFINITY;
        for (p, sp) in scores[..len].iter_mut().enumerate() {
            let mut acc = [0f32; 8];
            for (j, &x) in q.iter().enumerate() {
                acc[j % 8] += x * keys.at(p, j);
            }
            *sp = acc.iter().sum::<f32>() * scale;
            max = max.max(*sp);
        }
        let mut sum = 0.0;
        for sp in scores[..len].iter_mut() {
            *sp = (*sp - max).exp();
            sum += *sp;
        }
        out.fill(0.0);
        for (p, &w) in scores[..len].iter().enumerate() {
            for (i, o) in out.iter_mut().enumerate() {
                *o += w * values.at(p, i);
            }
        }
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, KvElem, KvRows};
    use core::arch::x86_64::*;

    /// # Safety
    /// AVX-512F + F16C; `dst` holds `src.len()` f16 values.
    #[target_feature(enable = "avx512f,f16c,avx2,fma")]
    pub(super) unsafe fn store_f16(dst: *mut u16, src: &[f32]) {
        let mut i = 0;
        while i + 16 <= src.len() {
            // SAFETY: `i + 16 <= len` for both.
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_storeu_si256(dst.add(i).cast(), h);
            }
            i += 16;
        }
        for (j, &v) in src.iter().enumerate().skip(i) {
            // SAFETY: `j < len`.
            unsafe { *dst.add(j) = half::f16::from_f32(v).to_bits() };
        }
    }

    /// Elements `16 j .. 16 j + 16` of the row at `p` as f32; for int8, `s` points at
    /// the row's first block scale.
    #[inline]
    #[target_feature(enable = "avx512f,f16c,avx2,fma")]
    unsafe fn load<T: KvElem>(p: *const T, s: *const f32, j: usize) -> __m512 {
        // SAFETY: the caller guarantees 16 readable elements (and for int8 their block
        // scale) and AVX-512F.
        unsafe {
            let p = p.add(16 * j);
            if T::F16 {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
            } else if T::I8 {
                let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())));
                _mm512_mul_ps(v, _mm512_set1_ps(*s.add(16 * j / BLOCK)))
            } else {
                _mm512_loadu_ps(p.cast())
            }
        }
    }

    /// `exp(x)`, relative error ~2e-7 (Cephes `expf`); below -104 it gives 0, above
    /// ~88.7 infinity (through `vscalefps`).
    #[inline]
    #[target_feature(enable = "avx512f,f16c,avx2,fma")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        // Taylor/minimax polynomial of exp on [-ln2/2, ln2/2] (Cephes expf).
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let r2 = _mm512_mul_ps(r, r);
        p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(p, n)
    }

    /// See [`super::silu_mul`].
    ///
    /// # Safety
    /// AVX-512F; `g.len() == u.len()`.
    #[target_feature(enable = "avx512f,f16c,avx2,fma")]
    pub(super) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let n = g.len();
        let mut i = 0;
        while i < n {
            let m: __mmask16 = if n - i >= 16 {
                !0
            } else {
                (1u16 << (n - i)) - 1
            };
            // SAFETY: masked to the `n - i` remaining elements of both slices.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
                let y = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
                let r = _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e)), y);
                _mm512_mask_storeu_ps(g.as_mut_ptr().add(i), m, r);
            }
            i += 16;
        }
    }

    /// See [`super::attend`], for `S` query heads sharing the keys and values; `V = hd /
    /// 16`. Each key and value row is loaded (and widened) once for all `S` heads.
    ///
    /// # Safety
    /// AVX-512F + F16C; `q` and `out` hold `S * 16 V` elements, `keys`/`values` hold
    /// positions `0..len` of `16 V` elements (`KvRows::holds`), `scores` holds `S * len`,
    /// `len >= 1`; `P * V <= 16`.
    #[target_feature(enable = "avx512f,f16c,avx2,fma")]
    pub(super) unsafe fn attend<T: KvElem, const V: usize, const S: usize, const P: usize>(
        q: *const f32,
        keys: KvRows<'_, T>,
        values: KvRows<'_, T>,
        len: usize,
        scale: f32,
        scores: *mut f32,
        out: *mut f32,
    ) {
        let stride = keys.stride;
        // Scales advance by `stride / 32` a position (int8 only; never read otherwise).
        let sstride = stride / BLOCK;
        let (keys, kscales) = (keys.data.as_ptr(), keys.scales.as_ptr());
        let (values, vscales) = (values.data.as_ptr(), values.scales.as_ptr());
        // SAFETY (whole body): every pointer offset stays within the bounds the caller
        // guarantees: position `p < len` at `p * stride`, `16 V` elements each, and its
        // scales at `p * stride / 32`; head `g < S` at `g * 16 V` of `q`/`out` and at
        // `g * len` of `scores`.
        unsafe {
            // Scores: `P` key rows widened into registers, then each head's `P` dot
            // products (independent chains), one transposed reduction of them, and the
            // scale on the `P` sums (as the reference applies it).
            let mut p = 0;
            while p < len {
                let pp = (len - p).min(P);
                let mut k = [_mm512_setzero_ps(); 16];
                for u in 0..P {
                    // A partial group repeats its last row (results dropped).
                    let r = p + u.min(pp - 1);
                    let (kp, ks) = (keys.add(r * stride), kscales.wrapping_add(r * sstride));
                    for j in 0..V {
                        k[u * V + j] = load(kp, ks, j);
                    }
                }
                for g in 0..S {
                    let qg = q.add(g * 16 * V);
                    let mut a = [_mm512_setzero_ps(); P];
                    for j in 0..V {
                        let qj = _mm512_loadu_ps(qg.add(16 * j));
                        for (u, a) in a.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(qj, k[u * V + j], *a);
                        }
                    }
                    let sums = crate::backend::cpu::kernels::avx512::hsum(&a);
                    for (u, v) in sums.iter().enumerate().take(pp) {
                        *scores.add(g * len + p + u) = *v * scale;
                    }
                }
                p += P;
            }
            // Softmax of each head's scores, in place (unnormalised; `inv` per head).
            let mut inv = [0f32; S];
            for (g, inv) in inv.iter_mut().enumerate() {
                let sc = scores.add(g * len);
                let mut maxv = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut p = 0;
                while p < len {
                    let m = mask(len - p);
                    maxv = _mm512_mask_max_ps(maxv, m, maxv, _mm512_maskz_loadu_ps(m, sc.add(p)));
                    p += 16;
                }
                let max = _mm512_set1_ps(_mm512_reduce_max_ps(maxv));
                let mut sumv = _mm512_setzero_ps();
                let mut p = 0;
                while p < len {
                    let m = mask(len - p);
                    let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc.add(p)), max));
                    let e = _mm512_maskz_mov_ps(m, e);
                    _mm512_mask_storeu_ps(sc.add(p), m, e);
                    sumv = _mm512_add_ps(sumv, e);
                    p += 16;
                }
                *inv = 1.0 / _mm512_reduce_add_ps(sumv);
            }
            // Weighted values: each value row widened once, then `S * V` independent
            // FMA chains.
            let mut acc = [[_mm512_setzero_ps(); V]; S];
            for p in 0..len {
                let (vp, vs) = (values.add(p * stride), vscales.wrapping_add(p * sstride));
                let v: [__m512; V] = core::array::from_fn(|j| load(vp, vs, j));
                for (g, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*scores.add(g * len + p));
                    for (a, v) in acc.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(w, *v, *a);
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                let iv = _mm512_set1_ps(inv[g]);
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(g * 16 * V + 16 * j), _mm512_mul_ps(*a, iv));
                }
            }
        }
    }

    /// Lanes `0..min(n, 16)`.
    #[inline]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 { !0 } else { (1u16 << n) - 1 }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::super::neon::load_w16;
    use super::{AttendJob, BLOCK, KvElem};
    use core::arch::aarch64::*;
    use core::arch::asm;

    /// 8 f32 to f16 with `fcvtn`/`fcvtn2` (round to nearest even under the default
    /// FPCR, as `half::f16::from_f32`; overflow to infinity, subnormals kept), the rest
    /// one by one.
    ///
    /// # Safety
    /// `dst` holds `src.len()` f16 values.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn store_f16(dst: *mut u16, src: &[f32]) {
        let mut i = 0;
        while i + 8 <= src.len() {
            // SAFETY: `i + 8 <= len` for both; `fcvtn` is ARMv8.0 AdvSIMD (baseline on
            // aarch64) and touches registers only.
            unsafe {
                let (a, b) = (
                    vld1q_f32(src.as_ptr().add(i)),
                    vld1q_f32(src.as_ptr().add(i + 4)),
                );
                let h: uint16x8_t;
                asm!(
                    "fcvtn {h:v}.4h, {a:v}.4s",
                    "fcvtn2 {h:v}.8h, {b:v}.4s",
                    // `h` is written before `b` is read: not `lateout`.
                    h = out(vreg) h,
                    a = in(vreg) a,
                    b = in(vreg) b,
                    options(pure, nomem, nostack, preserves_flags)
                );
                vst1q_u16(dst.add(i), h);
            }
            i += 8;
        }
        for (j, &v) in src.iter().enumerate().skip(i) {
            // SAFETY: `j < len`.
            unsafe { *dst.add(j) = half::f16::from_f32(v).to_bits() };
        }
    }

    /// `exp(x)`, the AVX-512 one's Cephes `expf` (relative error ~2e-7; below -104 it
    /// gives 0, above ~88.7 infinity). Without `vscalefps`, `2^n` (`n` in -150..=185
    /// after the clamp) is two normal powers `2^(n >> 1)` and `2^(n - (n >> 1))` built in
    /// the exponent bits, so results in the subnormal range round once, as `vscalefps`
    /// rounds them.
    #[inline]
    #[target_feature(enable = "neon")]
    fn exp(x: float32x4_t) -> float32x4_t {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-104.0)), vdupq_n_f32(128.0));
        let n = vrndnq_f32(vmulq_n_f32(x, core::f32::consts::LOG2_E));
        let r = vfmsq_n_f32(x, n, 0.693_145_75);
        let r = vfmsq_n_f32(r, n, 1.428_606_8e-6);
        let mut p = vdupq_n_f32(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = vfmaq_f32(vdupq_n_f32(c), p, r);
        }
        p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
        let ni = vcvtq_s32_f32(n);
        let n1 = vshrq_n_s32::<1>(ni);
        let pow2 =
            |k: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))));
        vmulq_f32(vmulq_f32(p, pow2(n1)), pow2(vsubq_s32(ni, n1)))
    }

    /// `silu(x) * y` on 4 lanes.
    #[inline]
    #[target_feature(enable = "neon")]
    fn silu4(x: float32x4_t, y: float32x4_t) -> float32x4_t {
        let e = exp(vnegq_f32(x));
        vmulq_f32(vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), e)), y)
    }

    /// See [`super::silu_mul`]: 8 elements a step (two independent chains of 34
    /// instructions, mostly dependent, in the disassembly's 69-instruction loop: room
    /// for in-order cores such as the Cortex-A55 to overlap them), the last `len % 8`
    /// through a zero-padded copy.
    ///
    /// # Safety
    /// NEON (baseline); `g.len() == u.len()`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let mut gc = g.chunks_exact_mut(8);
        let mut uc = u.chunks_exact(8);
        for (g, u) in (&mut gc).zip(&mut uc) {
            // SAFETY: 8 elements in each chunk.
            unsafe {
                let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
                let a = silu4(vld1q_f32(gp), vld1q_f32(up));
                let b = silu4(vld1q_f32(gp.add(4)), vld1q_f32(up.add(4)));
                vst1q_f32(gp, a);
                vst1q_f32(gp.add(4), b);
            }
        }
        let (g, u) = (gc.into_remainder(), uc.remainder());
        if !g.is_empty() {
            let (mut gb, mut ub) = ([0f32; 8], [0f32; 8]);
            gb[..g.len()].copy_from_slice(g);
            ub[..u.len()].copy_from_slice(u);
            for (gb, ub) in gb.chunks_exact_mut(4).zip(ub.chunks_exact(4)) {
                // SAFETY: 4 elements in each chunk.
                unsafe {
                    vst1q_f32(
                        gb.as_mut_ptr(),
                        silu4(vld1q_f32(gb.as_ptr()), vld1q_f32(ub.as_ptr())),
                    )
                };
            }
            g.copy_from_slice(&gb[..g.len()]);
        }
    }

    /// Elements `16 c .. 16 c + 16` of the row at `p` as f32; for int8, `s` points at
    /// the row's first block scale.
    ///
    /// # Safety
    /// 16 readable elements there (and for int8 their block scale).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load16<T: KvElem>(p: *const T, s: *const f32, c: usize) -> [float32x4_t; 4] {
        // SAFETY: by the caller; `ld1` has no alignment needs.
        unsafe {
            let p = p.add(16 * c);
            if T::I8 {
                let v = vld1q_s8(p.cast());
                let sc = *s.add(16 * c / BLOCK);
                let (a, b) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
                [
                    vmovl_s16(vget_low_s16(a)),
                    vmovl_high_s16(a),
                    vmovl_s16(vget_low_s16(b)),
                    vmovl_high_s16(b),
                ]
                .map(|w| vmulq_n_f32(vcvtq_f32_s32(w), sc))
            } else if T::F16 {
                load_w16::<true>(p.cast())
            } else {
                load_w16::<false>(p.cast())
            }
        }
    }

    /// See [`super::attend`], for the `S` query heads `g0..g0 + S` of `job` (head dim a
    /// multiple of 16), in pieces of 16 elements (4 vectors): each key row is loaded and
    /// widened once for all `S` heads; each score is the reference's sum to the bit (its
    /// 8 partial sums of `j % 8` are the lanes of 2 accumulators, multiply then add, not
    /// fused, summed in its order): with fused 4-accumulator sums an output of the int8
    /// test (hd 128, 513 positions) missed its bound by 1% (2.08e-6 against 2.06e-6). The scores go
    /// through the vectorised `exp`, and the values are
    /// summed piece by piece over all positions (each value piece loaded once for all
    /// `S` heads, `4 S` independent FMA chains in registers).
    ///
    /// # Safety
    /// NEON; the shapes `super::attend` asserts; `scores` holds `S * len` and `out` (head
    /// `g0`'s first element) `S * hd` elements; `g0 + S <= heads`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn attend<T: KvElem, const S: usize>(
        job: &AttendJob<'_, T>,
        g0: usize,
        scores: *mut f32,
        out: *mut f32,
    ) {
        let AttendJob {
            q,
            heads,
            keys,
            values,
            len,
            scale,
        } = *job;
        let hd = q.len() / heads;
        let stride = keys.stride;
        // Scales advance by `stride / 32` a position (int8 only; never read otherwise).
        let sstride = stride / BLOCK;
        let (kp, ks) = (keys.data.as_ptr(), keys.scales.as_ptr());
        let (vp, vs) = (values.data.as_ptr(), values.scales.as_ptr());
        // SAFETY (whole body): position `p < len` at `p * stride`, `hd` elements each
        // and its scales at `p * stride / 32` (`holds`); head `g < S` at
        // `(g0 + g) * hd` of `q`, `g * hd` of `out` and `g * len` of `scores`.
        unsafe {
            let q = q.as_ptr().add(g0 * hd);
            for p in 0..len {
                let (kr, kss) = (kp.add(p * stride), ks.wrapping_add(p * sstride));
                let mut acc = [[vdupq_n_f32(0.0); 2]; S];
                for c in 0..hd / 16 {
                    let k = load16(kr, kss, c);
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let qg = q.add(g * hd + 16 * c);
                        for (j, k) in k.iter().enumerate() {
                            let a = &mut acc[j % 2];
                            *a = vaddq_f32(*a, vmulq_f32(vld1q_f32(qg.add(4 * j)), *k));
                        }
                    }
                }
                for (g, a) in acc.iter().enumerate() {
                    let mut t = [0f32; 8];
                    vst1q_f32(t.as_mut_ptr(), a[0]);
                    vst1q_f32(t.as_mut_ptr().add(4), a[1]);
                    *scores.add(g * len + p) = t.iter().sum::<f32>() * scale;
                }
            }
            // Softmax of each head's scores, in place (unnormalised; `inv` per head);
            // the last `len % 4` one by one.
            let mut inv = [0f32; S];
            for (g, inv) in inv.iter_mut().enumerate() {
                let sc = core::slice::from_raw_parts_mut(scores.add(g * len), len);
                let mut chunks = sc.chunks_exact_mut(4);
                let mut maxv = vdupq_n_f32(f32::NEG_INFINITY);
                for c in &mut chunks {
                    maxv = vmaxq_f32(maxv, vld1q_f32(c.as_ptr()));
                }
                let max = chunks
                    .into_remainder()
                    .iter()
                    .fold(vmaxvq_f32(maxv), |m, &v| m.max(v));
                let mut chunks = sc.chunks_exact_mut(4);
                let mut sumv = vdupq_n_f32(0.0);
                for c in &mut chunks {
                    let e = exp(vsubq_f32(vld1q_f32(c.as_ptr()), vdupq_n_f32(max)));
                    vst1q_f32(c.as_mut_ptr(), e);
                    sumv = vaddq_f32(sumv, e);
                }
                let mut sum = vaddvq_f32(sumv);
                for v in chunks.into_remainder() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                *inv = 1.0 / sum;
            }
            for c in 0..hd / 16 {
                let mut acc = [[vdupq_n_f32(0.0); 4]; S];
                for p in 0..len {
                    let v = load16(vp.add(p * stride), vs.wrapping_add(p * sstride), c);
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let w = *scores.add(g * len + p);
                        for (a, v) in acc.iter_mut().zip(&v) {
                            *a = vfmaq_n_f32(*a, *v, w);
                        }
                    }
                }
                for (g, acc) in acc.iter().enumerate() {
                    for (j, a) in acc.iter().enumerate() {
                        vst1q_f32(out.add(g * hd + 16 * c + 4 * j), vmulq_n_f32(*a, inv[g]));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use glint_format::quant::test_values as sample;

    /// Keys or values of `len` positions in the cache type `T`: int8 goes through
    /// [`store_q8`] row by row (block scales), the float types element by element.
    fn cache<T: KvElem>(x: &[f32], stride: usize) -> (Vec<T>, Vec<f32>) {
        if !T::I8 {
            return (x.iter().map(|&v| T::from_f32(v)).collect(), Vec::new());
        }
        let mut q = vec![0i8; x.len()];
        let mut sc = vec![0f32; x.len() / BLOCK];
        for ((q, sc), x) in q
            .chunks_exact_mut(stride)
            .zip(sc.chunks_exact_mut(stride / BLOCK))
            .zip(x.chunks_exact(stride))
        {
            store_q8(q, sc, x);
        }
        // SAFETY: `T` is `i8` here (`T::I8`): same size, alignment and validity.
        let q = unsafe { std::mem::transmute::<Vec<i8>, Vec<T>>(q) };
        (q, sc)
    }

    fn check<T: KvElem>() {
        for hd in [32usize, 64, 128, 48] {
            if T::I8 && !hd.is_multiple_of(BLOCK) {
                continue;
            }
            for len in [1usize, 2, 3, 5, 16, 17, 33, 100, 513] {
                let stride = hd * 3;
                let kx: Vec<f32> = sample(len * stride, 11).iter().map(|v| v * 3.0).collect();
                let (k, ks) = cache::<T>(&kx, stride);
                let (v, vs) = cache::<T>(&sample(len * stride, 13), stride);
                // The second KV head of the row, as the model passes it.
                let off = hd;
                let keys = KvRows {
                    data: &k[off..],
                    scales: ks.get(off / BLOCK..).unwrap_or(&[]),
                    stride,
                };
                let values = KvRows {
                    data: &v[off..],
                    scales: vs.get(off / BLOCK..).unwrap_or(&[]),
                    stride,
                };
                // 1..=4 heads run as one group; 5 and 9 as runs of up to 4.
                for heads in [1usize, 2, 3, 4, 5, 9] {
                    let q: Vec<f32> = sample(heads * hd, 7 + heads as u32)
                        .iter()
                        .map(|v| v * 4.0)
                        .collect();
                    let mut sc = vec![0f32; heads * len];
                    let mut want = vec![0f32; heads * hd];
                    let job = AttendJob {
                        q: &q,
                        heads,
                        keys,
                        values,
                        len,
                        scale: 0.125,
                    };
                    attend_scalar(&job, &mut sc, &mut want);
                    for kernel in Kernel::all_available() {
                        let mut got = vec![0f32; heads * hd];
                        attend(kernel, &job, &mut sc, &mut got);
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - w).abs() <= 2e-6 * (1.0 + w.abs()),
                                "{} hd {hd} len {len} heads {heads}: {g} vs {w}",
                                kernel.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn attention_matches_the_scalar_reference_f32() {
        check::<f32>();
    }

    #[test]
    fn attention_matches_the_scalar_reference_f16() {
        check::<f16>();
    }

    #[test]
    fn attention_matches_the_scalar_reference_int8() {
        check::<i8>();
    }

    /// Int8 keys and values stay close to the f32 result: the softmax weights move by
    /// the keys' rounding (|dk| <= max|k| / 254 per element) and the output by the values'.
    #[test]
    fn int8_attention_is_close_to_f32() {
        let (hd, stride, len) = (64, 192, 200);
        let q: Vec<f32> = sample(hd, 5).iter().map(|v| v * 2.0).collect();
        let kx: Vec<f32> = sample(len * stride, 6).iter().map(|v| v * 3.0).collect();
        let vx = sample(len * stride, 8);
        let (kq, ks) = cache::<i8>(&kx, stride);
        let (vq, vs) = cache::<i8>(&vx, stride);
        let (kf, vf) = (
            KvRows {
                data: &kx[..],
                scales: &[],
                stride,
            },
            KvRows {
                data: &vx[..],
                scales: &[],
                stride,
            },
        );
        let (k8, v8) = (
            KvRows {
                data: &kq[..],
                scales: &ks[..],
                stride,
            },
            KvRows {
                data: &vq[..],
                scales: &vs[..],
                stride,
            },
        );
        let mut sc = vec![0f32; len];
        let mut want = vec![0f32; hd];
        let f32_job = AttendJob {
            q: &q,
            heads: 1,
            keys: kf,
            values: vf,
            len,
            scale: 0.125,
        };
        attend_scalar(&f32_job, &mut sc, &mut want);
        let mut got = vec![0f32; hd];
        let i8_job = AttendJob {
            keys: k8,
            values: v8,
            q: &q,
            heads: 1,
            len,
            scale: 0.125,
        };
        attend(Kernel::best(), &i8_job, &mut sc, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.01, "{g} vs {w}");
        }
    }

    #[test]
    fn store_q8_is_llamacpp_q8_0_rounding() {
        let mut x: Vec<f32> = sample(64, 4);
        x[..32].fill(0.0);
        x[40] = -2.5;
        let (mut q, mut s) = (vec![0i8; 64], vec![0f32; 2]);
        store_q8(&mut q, &mut s, &x);
        assert_eq!(s[0], 0.0);
        assert!(q[..32].iter().all(|&v| v == 0));
        assert_eq!(s[1], 2.5 / 127.0);
        assert_eq!(q[40], -127);
        for i in 32..64 {
            assert!((q[i] as f32 * s[1] - x[i]).abs() <= s[1] / 2.0 + 1e-7);
        }
    }

    #[test]
    fn silu_matches_the_scalar_reference() {
        let g0: Vec<f32> = sample(1000, 9).iter().map(|v| v * 30.0).collect();
        let u: Vec<f32> = sample(1000, 10);
        let mut want = g0.clone();
        silu_mul(Kernel::Scalar, &mut want, &u);
        for kernel in Kernel::all_available() {
            for len in (1usize..=17).chain([31, 32, 33, 999, 1000]) {
                let mut got = g0[..len].to_vec();
                silu_mul(kernel, &mut got, &u[..len]);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{} len {len}: {g} vs {w}",
                        kernel.name()
                    );
                }
            }
            // Saturation, in the vector body (first 8) and in the tail.
            let x = [
                200.0f32, -200.0, 0.0, 90.0, -90.0, 104.0, -104.0, 1e30, -1e30,
            ];
            let mut big = x.to_vec();
            silu_mul(kernel, &mut big, &[1.0; 9]);
            let mut tail = x[..3].to_vec();
            silu_mul(kernel, &mut tail, &[1.0; 3]);
            assert_eq!(big[..3], [200.0, -0.0, 0.0], "{}", kernel.name());
            assert_eq!(tail, [200.0, -0.0, 0.0], "{}", kernel.name());
            assert_eq!(big[3], 90.0, "{}", kernel.name());
            assert_eq!(big[5], 104.0, "{}", kernel.name());
            assert_eq!(big[7], 1e30, "{}", kernel.name());
            assert!(
                big[4] <= 0.0 && big[4] > -1e-36,
                "{}: {}",
                kernel.name(),
                big[4]
            );
            assert!(
                big[6] <= 0.0 && big[6] > -1e-40,
                "{}: {}",
                kernel.name(),
                big[6]
            );
            assert_eq!(big[8], -0.0, "{}", kernel.name());
        }
    }

    #[test]
    fn store_rounds_like_half() {
        let mut src: Vec<f32> = sample(1003, 3).iter().map(|v| v * 70000.0).collect();
        // f16 subnormals (below 6.1e-5) and exact ties between two f16 values.
        src[..40].iter_mut().for_each(|v| *v *= 1e-9);
        src[40..44].copy_from_slice(&[
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -2049.0,
            65520.0,
        ]);
        for kernel in Kernel::all_available() {
            for len in [1usize, 7, 8, 9, 1000, 1003] {
                let mut got = vec![f16::ZERO; len];
                store(kernel, &mut got, &src[..len]);
                for (g, &s) in got.iter().zip(&src) {
                    assert_eq!(g.to_bits(), f16::from_f32(s).to_bits(), "{}", kernel.name());
                }
            }
        }
    }
}
