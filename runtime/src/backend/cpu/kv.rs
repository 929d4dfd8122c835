//! The CPU's KV cache and the attention over it.

use glint_format::BLOCK;
use half::f16;

use super::kernels::Kernel;
use super::kernels::attn::{self, AttendJob, KvElem, KvRows};
use super::pool::{MAX_CHUNKS, ThreadPool, split};
use super::{SyncPtr, zeroed};
use crate::backend::{AttnShape, BackendError, KvStore, KvType, ModelShape};

/// Element types whose all-zero bytes are a valid zero value, so a cache or scratch
/// buffer can come from zeroed memory (see `zeroed`).
pub(super) trait ZeroBits: Copy {}
impl ZeroBits for f32 {}
impl ZeroBits for f16 {}
impl ZeroBits for i8 {}

/// The storage of a [`KvCache`]: f32; f16 (half the memory and bandwidth; values are
/// rounded to nearest on append and widened on read); or int8 per 32-element block.
enum KvData {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    /// With one scale per 32 elements (`ks`, `vs`).
    I8 {
        k: Vec<i8>,
        v: Vec<i8>,
        ks: Vec<f32>,
        vs: Vec<f32>,
    },
}

/// Keys and values of every layer for up to `capacity` positions, allocated once.
/// Every buffer comes from zeroed memory, so only written positions become resident.
pub struct KvCache {
    data: KvData,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

/// Chunks per thread of a batch's attention (see `attend_all`).
const ATTENTION_CHUNKS_PER_THREAD: usize = 8;

/// What one attention call works with, besides the cache.
pub(super) struct AttentionJob<'a> {
    pub attn: &'a AttnShape,
    /// `[n][q_dim]` queries of the new positions.
    pub q: &'a [f32],
    /// `[n][q_dim]` outputs.
    pub out: &'a mut [f32],
    /// Per thread, `group` rows of `capacity` scores.
    pub scores: &'a mut [f32],
    pub pool: &'a ThreadPool,
    pub kernel: Kernel,
}

impl KvCache {
    /// A cache of `kv` elements for `capacity` positions of `shape`'s model. `Err` for
    /// an int8 cache whose head dimension is not a multiple of 32, and when the memory
    /// cannot be allocated.
    pub fn new(shape: &ModelShape, capacity: usize, kv: KvType) -> Result<Self, BackendError> {
        let kv_dim = shape.attn.kv_dim;
        let n = shape
            .n_layers
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(kv_dim))
            .ok_or(BackendError::OutOfMemory {
                what: "KV cache",
                bytes: kv.cache_bytes(shape, capacity),
            })?;
        let data = match kv {
            KvType::F16 => KvData::F16 {
                k: zeroed(n, "KV cache")?,
                v: zeroed(n, "KV cache")?,
            },
            KvType::F32 => KvData::F32 {
                k: zeroed(n, "KV cache")?,
                v: zeroed(n, "KV cache")?,
            },
            KvType::Int8 => {
                let hd = shape.attn.head_dim;
                if !hd.is_multiple_of(BLOCK) {
                    return Err(BackendError::Unsupported(format!(
                        "an int8 KV cache needs a head dimension that is a multiple of 32, not {hd}"
                    )));
                }
                KvData::I8 {
                    k: zeroed(n, "KV cache")?,
                    v: zeroed(n, "KV cache")?,
                    ks: zeroed(n / BLOCK, "KV cache")?,
                    vs: zeroed(n / BLOCK, "KV cache")?,
                }
            }
        };
        Ok(Self {
            data,
            kv_dim,
            capacity,
            len: 0,
        })
    }

    fn layer_range(&self, layer: usize) -> std::ops::Range<usize> {
        let size = self.capacity * self.kv_dim;
        layer * size..(layer + 1) * size
    }

    /// Stores `k` and `v` (`[n][kv_dim]`) as layer `layer`'s positions `len..len + n`.
    pub(super) fn append(&mut self, kernel: Kernel, layer: usize, k: &[f32], v: &[f32]) {
        assert!(
            self.len * self.kv_dim + k.len() <= self.capacity * self.kv_dim && k.len() == v.len(),
            "cache overflow"
        );
        let base = self.layer_range(layer).start + self.len * self.kv_dim;
        let r = base..base + k.len();
        match &mut self.data {
            KvData::F32 { k: kc, v: vc } => {
                kc[r.clone()].copy_from_slice(k);
                vc[r].copy_from_slice(v);
            }
            KvData::F16 { k: kc, v: vc } => {
                attn::store(kernel, &mut kc[r.clone()], k);
                attn::store(kernel, &mut vc[r], v);
            }
            KvData::I8 {
                k: kc,
                v: vc,
                ks,
                vs,
            } => {
                let sr = r.start / BLOCK..r.end / BLOCK;
                attn::store_q8(&mut kc[r.clone()], &mut ks[sr.clone()], k);
                attn::store_q8(&mut vc[r], &mut vs[sr], v);
            }
        }
    }

    /// Causal grouped-query attention of the `n` new tokens (at `len..len + n`, already
    /// appended) over layer `layer`, heads split across threads.
    pub(super) fn attend(&self, layer: usize, n: usize, job: AttentionJob<'_>) {
        assert!(self.len + n <= self.capacity, "cache overflow");
        let r = self.layer_range(layer);
        let rs = r.start / BLOCK..r.end / BLOCK;
        let kv_dim = self.kv_dim;
        match &self.data {
            KvData::I8 { k, v, ks, vs } => attend_all(
                LayerRows::new(&k[r.clone()], &ks[rs.clone()], kv_dim),
                LayerRows::new(&v[r], &vs[rs], kv_dim),
                self.len,
                n,
                job,
            ),
            KvData::F32 { k, v } => {
                let (keys, values) = (
                    LayerRows::new(&k[r.clone()], &[], kv_dim),
                    LayerRows::new(&v[r], &[], kv_dim),
                );
                attend_all(keys, values, self.len, n, job)
            }
            KvData::F16 { k, v } => {
                let (keys, values) = (
                    LayerRows::new(&k[r.clone()], &[], kv_dim),
                    LayerRows::new(&v[r], &[], kv_dim),
                );
                attend_all(keys, values, self.len, n, job)
            }
        }
    }
}

impl KvStore for KvCache {
    fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn commit(&mut self, n: usize) {
        assert!(self.len + n <= self.capacity, "cache overflow");
        self.len += n;
    }

    fn kv_type(&self) -> KvType {
        match self.data {
            KvData::F32 { .. } => KvType::F32,
            KvData::F16 { .. } => KvType::F16,
            KvData::I8 { .. } => KvType::Int8,
        }
    }

    fn bytes(&self) -> u64 {
        match &self.data {
            KvData::F32 { k, v } => ((k.len() + v.len()) * 4) as u64,
            KvData::F16 { k, v } => ((k.len() + v.len()) * 2) as u64,
            KvData::I8 { k, v, ks, vs } => (k.len() + v.len() + (ks.len() + vs.len()) * 4) as u64,
        }
    }
}

/// One layer's keys (or values): `[capacity][kv_dim]` elements, with block scales
/// for int8 (empty otherwise).
#[derive(Clone, Copy)]
struct LayerRows<'a, T> {
    data: &'a [T],
    scales: &'a [f32],
    kv_dim: usize,
}

impl<'a, T> LayerRows<'a, T> {
    fn new(data: &'a [T], scales: &'a [f32], kv_dim: usize) -> Self {
        Self {
            data,
            scales,
            kv_dim,
        }
    }

    /// The rows of the KV head starting at element `off` of each position.
    fn head(self, off: usize) -> KvRows<'a, T> {
        KvRows {
            data: &self.data[off..],
            scales: self.scales.get(off / BLOCK..).unwrap_or(&[]),
            stride: self.kv_dim,
        }
    }
}

/// The attention of [`KvCache::attend`] over one layer's keys and values of element
/// type `T`, for `n` new tokens after `pos0` cached positions.
fn attend_all<T: KvElem>(
    keys: LayerRows<'_, T>,
    values: LayerRows<'_, T>,
    pos0: usize,
    n: usize,
    job: AttentionJob<'_>,
) {
    let AttentionJob {
        attn: shape,
        q,
        out,
        scores,
        pool,
        kernel,
    } = job;
    let (hd, n_heads, group) = (shape.head_dim, shape.n_heads, shape.group);
    let stride = scores.len() / (pool.threads() * group);
    assert!(stride >= pos0 + n, "scores sized for fewer positions");
    assert!(q.len() >= n * shape.q_dim && out.len() >= n * shape.q_dim);
    let out = SyncPtr(out.as_mut_ptr());
    let scores = SyncPtr(scores.as_mut_ptr());
    // Work units: (token, KV head) with the `group` query heads that share it, so each
    // key and value row is read once for all of them. A single token with fewer groups
    // than twice the threads (SmolLM2: 3 groups, 2 threads) splits single heads
    // instead, which balances better.
    let per = if n == 1 && shape.n_kv_heads < 2 * pool.threads() {
        1
    } else {
        group
    };
    let units = n * n_heads / per;
    // A single token: one chunk per unit. A batch: work grows with the position, so
    // chunks of consecutive units are handed out from the last token back (the largest
    // first), which leaves the small ones to even out the threads' loads at the end.
    let chunks = match (n, pool.threads()) {
        (1, _) => units.min(MAX_CHUNKS),
        (_, 1) => 1,
        (_, t) => units.min(t * ATTENTION_CHUNKS_PER_THREAD),
    };
    pool.run(chunks, &|c, slot| {
        // SAFETY: thread `slot` alone uses the score rows of its own index, which lie in
        // the buffer (`stride` was derived from its length and the thread count).
        let sc = unsafe {
            std::slice::from_raw_parts_mut(scores.get().add(slot * group * stride), group * stride)
        };
        for unit in split(units, chunks, chunks - 1 - c, 1) {
            let (i, h) = (unit / (n_heads / per), unit % (n_heads / per) * per);
            let at = i * shape.q_dim + h * hd;
            // SAFETY: each unit (token, heads `h..h + per`) belongs to one chunk, run
            // once, which alone writes its `per * hd` outputs, inside `out` (asserted
            // above).
            let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), per * hd) };
            let off = h / group * hd;
            let job = AttendJob {
                q: &q[at..at + per * hd],
                heads: per,
                keys: keys.head(off),
                values: values.head(off),
                len: pos0 + i + 1,
                scale: shape.scale,
            };
            attn::attend(kernel, &job, sc, o);
        }
    });
}
