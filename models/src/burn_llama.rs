//! The float reference Llama as burn modules (feature `burn`): the model the runtime's
//! `Model::forward` computes, written once more for training (burn autodiff), where
//! every weight is an f32 parameter. Weights come in and go out under the canonical
//! tensor names of [`LlamaTensor`], so any checkpoint the importers read can be loaded,
//! and a trained model packs like any other.
//!
//! The forward runs a whole sequence at once (no KV cache): causal attention over the
//! positions `0..seq`.

use burn::module::{Module, Param, ParamId};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use glint_format::{BlockTensor, LlamaTensor, ModelConfig, RopeStyle, expected_llama_tensors};

/// Why a [`Llama`] could not be built from weights.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LlamaInitError {
    /// The weight source has no tensor of this (canonical) name.
    #[error("missing tensor {0:?}")]
    Missing(String),
    /// The tensor's values do not fill the shape the config implies.
    #[error("tensor {name:?} has {actual} values, its shape {shape:?} needs {expected}")]
    Length {
        /// Canonical name.
        name: String,
        /// The shape the config implies.
        shape: Vec<u64>,
        /// Values the shape needs.
        expected: usize,
        /// Values given.
        actual: usize,
    },
}

/// One tensor's values, f32, outermost dimension first (`[rows, cols]`, as Glint stores
/// matrices: a projection's rows are its outputs).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Canonical name (`blk.3.attn_q.weight`).
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Attention with RoPE and grouped-query heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// The SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// Gate projection.
    pub gate: Linear,
    /// Up projection.
    pub up: Linear,
    /// Down projection.
    pub down: Linear,
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Attention.
    pub attention: Attention,
    /// Norm before the feed-forward.
    pub ffn_norm: RmsNorm,
    /// Feed-forward.
    pub feed_forward: FeedForward,
}

/// A Llama-family model: embedding, blocks, final norm, head (the embedding's transpose
/// when tied).
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding.
    pub embed: Embedding,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output head, `None` when tied to the embedding.
    pub head: Option<Linear>,
    /// The model's configuration.
    #[module(skip)]
    pub config: ModelConfig,
}

/// RoPE's rotation for positions `0..seq`: `cos` and `sin` of shape `[seq, head_dim / 2]`.
struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    style: RopeStyle,
}

impl Rope {
    fn new(config: &ModelConfig, seq: usize, device: &Device) -> Self {
        let half = config.head_dim as usize / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(seq * half),
            Vec::with_capacity(seq * half),
        );
        for pos in 0..seq {
            for f in rope_inv_freq(config) {
                let (s, c) = (pos as f32 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        let t = |v| Tensor::from_data(TensorData::new(v, [seq, half]), device);
        Self {
            cos: t(cos),
            sin: t(sin),
            style: config.rope_style,
        }
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]`: each pair `(x0, x1)` becomes
    /// `(x0 cos - x1 sin, x0 sin + x1 cos)`. The pairs are adjacent (interleaved) or half a
    /// head apart (NeoX).
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, s, hd] = x.dims();
        let half = hd / 2;
        // Pairs on a last axis of two: [b, h, s, half, 2].
        let pairs: Tensor<5> = match self.style {
            RopeStyle::Interleaved => x.reshape([b, h, s, half, 2]),
            RopeStyle::Neox => x.reshape([b, h, s, 2, half]).swap_dims(3, 4),
        };
        let x0 = pairs.clone().narrow(4, 0, 1);
        let x1 = pairs.narrow(4, 1, 1);
        let cos = self.cos.clone().reshape([1, 1, s, half, 1]);
        let sin = self.sin.clone().reshape([1, 1, s, half, 1]);
        let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let r1 = x0 * sin + x1 * cos;
        let rotated = Tensor::cat(vec![r0, r1], 4);
        match self.style {
            RopeStyle::Interleaved => rotated.reshape([b, h, s, hd]),
            RopeStyle::Neox => rotated.swap_dims(3, 4).reshape([b, h, s, hd]),
        }
    }
}

/// RoPE inverse frequencies `theta^(-2i/d)`, with Llama-3 scaling where configured (as
/// the runtime's `rope_inv_freq`).
fn rope_inv_freq(c: &ModelConfig) -> Vec<f32> {
    let hd = c.head_dim as usize;
    (0..hd / 2)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f32 / hd as f32);
            c.rope_scaling.map_or(f, |s| s.scale(f))
        })
        .collect()
}

/// The additive causal mask `[1, 1, seq, seq]`: 0 where a query may attend, -inf after it.
fn causal_mask(seq: usize, device: &Device) -> Tensor<4> {
    let v = (0..seq * seq)
        .map(|i| {
            if i % seq > i / seq {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect::<Vec<_>>();
    Tensor::from_data(TensorData::new(v, [1, 1, seq, seq]), device)
}

/// `t` requiring gradients on an autodiff device (elsewhere as it is: a model to run).
fn trainable<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.is_autodiff() { t.require_grad() } else { t }
}

impl Attention {
    fn forward(&self, x: Tensor<3>, rope: &Rope, mask: Tensor<4>) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q.forward(x.clone()), nh));
        let k = rope.apply(heads(self.k.forward(x.clone()), nkv));
        let v = heads(self.v.forward(x), nkv);
        // Grouped-query attention: key/value head j serves query heads j*g .. (j+1)*g.
        let group = |t: Tensor<4>| -> Tensor<4> {
            t.unsqueeze_dim::<5>(2)
                .repeat_dim(2, nh / nkv)
                .reshape([b, nh, s, hd])
        };
        let scores = q
            .matmul(group(k).swap_dims(2, 3))
            .div_scalar((hd as f32).sqrt())
            + mask;
        let out = softmax(scores, 3).matmul(group(v));
        self.o.forward(out.swap_dims(1, 2).reshape([b, s, nh * hd]))
    }
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down
            .forward(silu(self.gate.forward(x.clone())) * self.up.forward(x))
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>, rope: &Rope, mask: Tensor<4>) -> Tensor<3> {
        let h = x.clone()
            + self
                .attention
                .forward(self.attn_norm.forward(x), rope, mask);
        h.clone() + self.feed_forward.forward(self.ffn_norm.forward(h))
    }
}

impl Llama {
    /// Builds the model of `config` on `device` with the weights `weight(name, shape)`
    /// returns for each canonical tensor name (f32, outermost dimension first). Parameter
    /// ids are numbered in the order of [`expected_llama_tensors`], so two models built
    /// from one config share ids (an optimizer's saved state finds its parameters again).
    pub fn from_weights(
        config: &ModelConfig,
        mut weight: impl FnMut(&str, &[u64]) -> Option<Vec<f32>>,
        device: &Device,
    ) -> Result<Self, LlamaInitError> {
        let mut tensors = std::collections::HashMap::new();
        for (id, (name, shape)) in expected_llama_tensors(config).into_iter().enumerate() {
            let values =
                weight(&name, &shape).ok_or_else(|| LlamaInitError::Missing(name.clone()))?;
            let expected = shape.iter().product::<u64>() as usize;
            if values.len() != expected {
                return Err(LlamaInitError::Length {
                    name,
                    shape,
                    expected,
                    actual: values.len(),
                });
            }
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            tensors.insert(name, (id as u64, dims, values));
        }
        let mut take = |t: LlamaTensor| tensors.remove(&t.name()).expect("checked above");
        let param2 = |(id, dims, values): (u64, Vec<usize>, Vec<f32>)| {
            let t = Tensor::<2>::from_data(TensorData::new(values, [dims[0], dims[1]]), device);
            Param::initialized(ParamId::from(id), trainable(t))
        };
        let param1 = |(id, _, values): (u64, Vec<usize>, Vec<f32>)| {
            let n = values.len();
            let t = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
            Param::initialized(ParamId::from(id), trainable(t))
        };
        // A projection stored [out, in] becomes burn's [in, out] weight (transposed here,
        // so that the parameter is a leaf of the autodiff graph).
        let linear = |(id, dims, values): (u64, Vec<usize>, Vec<f32>), bias: Option<_>| {
            let (rows, cols) = (dims[0], dims[1]);
            let mut t = vec![0f32; values.len()];
            for (r, row) in values.chunks_exact(cols).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    t[c * rows + r] = v;
                }
            }
            Linear {
                weight: param2((id, vec![cols, rows], t)),
                bias: bias.map(param1),
            }
        };
        let norm = |w| RmsNorm {
            gamma: param1(w),
            epsilon: config.norm_eps as f64,
        };
        let embed = Embedding {
            weight: param2(take(LlamaTensor::TokenEmbd)),
        };
        let mut blocks = Vec::with_capacity(config.n_layers as usize);
        for l in 0..config.n_layers {
            let mut b = |t| take(LlamaTensor::Block(l, t));
            let bias = |b: &mut dyn FnMut(BlockTensor) -> _, t| config.qkv_bias.then(|| b(t));
            let attention = Attention {
                q: {
                    let w = b(BlockTensor::AttnQ);
                    linear(w, bias(&mut b, BlockTensor::AttnQBias))
                },
                k: {
                    let w = b(BlockTensor::AttnK);
                    linear(w, bias(&mut b, BlockTensor::AttnKBias))
                },
                v: {
                    let w = b(BlockTensor::AttnV);
                    linear(w, bias(&mut b, BlockTensor::AttnVBias))
                },
                o: linear(b(BlockTensor::AttnOutput), None),
                n_heads: config.n_heads as usize,
                n_kv_heads: config.n_kv_heads as usize,
                head_dim: config.head_dim as usize,
            };
            blocks.push(Block {
                attn_norm: norm(b(BlockTensor::AttnNorm)),
                attention,
                ffn_norm: norm(b(BlockTensor::FfnNorm)),
                feed_forward: FeedForward {
                    gate: linear(b(BlockTensor::FfnGate), None),
                    up: linear(b(BlockTensor::FfnUp), None),
                    down: linear(b(BlockTensor::FfnDown), None),
                },
            });
        }
        let norm_out = norm(take(LlamaTensor::OutputNorm));
        let head = (!config.tied_embeddings).then(|| linear(take(LlamaTensor::Output), None));
        Ok(Self {
            embed,
            blocks,
            norm: norm_out,
            head,
            config: *config,
        })
    }

    /// The final-norm hidden states `[batch, seq, dim]` of `tokens` `[batch, seq]`.
    pub fn hidden(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let device = tokens.device();
        let seq = tokens.dims()[1];
        let rope = Rope::new(&self.config, seq, &device);
        let mask = causal_mask(seq, &device);
        let mut x = self.embed.forward(tokens);
        for block in &self.blocks {
            x = block.forward(x, &rope, mask.clone());
        }
        self.norm.forward(x)
    }

    /// The output head over hidden states: logits `[batch, seq, vocab]`.
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, s, d] = hidden.dims();
        let flat = hidden.reshape([b * s, d]);
        let logits = match &self.head {
            Some(head) => head.forward(flat),
            None => flat.matmul(self.embed.weight.val().transpose()),
        };
        logits.reshape([b, s, self.config.vocab_size as usize])
    }

    /// Logits `[batch, seq, vocab]` for `tokens` `[batch, seq]`: the prediction of the
    /// token after each position.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.hidden(tokens))
    }

    /// Every weight under its canonical name, in the order of [`expected_llama_tensors`]
    /// (projections back to Glint's `[out, in]`).
    pub fn weights(&self) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        let mut push = |t: LlamaTensor, v: Tensor<2>| {
            let [r, c] = v.dims();
            out.push(NamedTensor {
                name: t.name(),
                shape: vec![r as u64, c as u64],
                values: v.into_data().try_into_vec_as::<f32>().expect("f32 tensor"),
            });
        };
        let linear = |l: &Linear| l.weight.val().transpose();
        push(LlamaTensor::TokenEmbd, self.embed.weight.val());
        let mut vectors = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            let l = l as u32;
            let a = &b.attention;
            vectors.push((
                LlamaTensor::Block(l, BlockTensor::AttnNorm),
                b.attn_norm.gamma.val(),
            ));
            push(LlamaTensor::Block(l, BlockTensor::AttnQ), linear(&a.q));
            push(LlamaTensor::Block(l, BlockTensor::AttnK), linear(&a.k));
            push(LlamaTensor::Block(l, BlockTensor::AttnV), linear(&a.v));
            for (t, lin) in [
                (BlockTensor::AttnQBias, &a.q),
                (BlockTensor::AttnKBias, &a.k),
                (BlockTensor::AttnVBias, &a.v),
            ] {
                if let Some(bias) = &lin.bias {
                    vectors.push((LlamaTensor::Block(l, t), bias.val()));
                }
            }
            push(LlamaTensor::Block(l, BlockTensor::AttnOutput), linear(&a.o));
            vectors.push((
                LlamaTensor::Block(l, BlockTensor::FfnNorm),
                b.ffn_norm.gamma.val(),
            ));
            let f = &b.feed_forward;
            push(LlamaTensor::Block(l, BlockTensor::FfnGate), linear(&f.gate));
            push(LlamaTensor::Block(l, BlockTensor::FfnUp), linear(&f.up));
            push(LlamaTensor::Block(l, BlockTensor::FfnDown), linear(&f.down));
        }
        vectors.push((LlamaTensor::OutputNorm, self.norm.gamma.val()));
        if let Some(head) = &self.head {
            push(LlamaTensor::Output, linear(head));
        }
        for (t, v) in vectors {
            let n = v.dims()[0];
            out.push(NamedTensor {
                name: t.name(),
                shape: vec![n as u64],
                values: v.into_data().try_into_vec_as::<f32>().expect("f32 tensor"),
            });
        }
        let order: std::collections::HashMap<String, usize> = expected_llama_tensors(&self.config)
            .into_iter()
            .enumerate()
            .map(|(i, (n, _))| (n, i))
            .collect();
        out.sort_by_key(|t| order[&t.name]);
        out
    }
}
