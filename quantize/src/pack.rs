//! Packing: every source tensor converted to its target dtype — transcoded block for
//! block where the source and target grids agree (GGUF Q4_1 → q4g32a, Q4_0 → q4g32,
//! Q8_0 → q8g32, f32 → f32), quantized with GPTQ where a [`PackPlan`] has the
//! matrix's calibration Hessian, otherwise decoded to f32 and quantized by
//! round-to-nearest. A plan may also give single tensors another dtype than the
//! scheme's (a mixed recipe).

use crate::gguf::{self, GgmlType};
use crate::gptq::{GptqError, GptqOptions, gptq};
use crate::source::{Encoding, Imported, SourceTensor};
use glint_format::quant::{Planes, dequantize_row, quantize};
use glint_format::{DType, FileMeta, LlamaTensor, Matrix, TensorOut};
use half::{bf16, f16};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A packing scheme: which dtype each kind of tensor gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// int4 group 32 asymmetric matrices (GGUF Q4_1 math); int8 embedding and head.
    Q4g32a,
    /// int4 group 32 symmetric matrices (GGUF Q4_0 math); int8 embedding and head.
    Q4g32,
    /// int4 group 64 symmetric matrices; int8 embedding and head.
    Q4g64,
    /// int4 group 128 symmetric matrices; int8 embedding and head.
    Q4g128,
    /// int8 group 32 everywhere.
    Q8,
    /// f16 everywhere.
    F16,
    /// f32 everywhere: the float reference that evaluation compares with (4 bytes a
    /// weight; the runtime runs it exactly).
    F32,
}

impl Scheme {
    /// Every scheme, for help texts and tests.
    pub const ALL: [Scheme; 7] = [
        Self::Q4g32a,
        Self::Q4g32,
        Self::Q4g64,
        Self::Q4g128,
        Self::Q8,
        Self::F16,
        Self::F32,
    ];

    /// The scheme's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4g32a => "q4g32a",
            Self::Q4g32 => "q4g32",
            Self::Q4g64 => "q4g64",
            Self::Q4g128 => "q4g128",
            Self::Q8 => "q8",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The dtype of the tensor `name` of `shape`. Vectors (norms, biases) stay f32; the
    /// embedding and output head get int8 under the int4 schemes because they dominate
    /// the logits' error and a token lookup reads one row only. Where a row is not a
    /// whole number of groups (SmolLM2's 576 columns and group 128), the symmetric int4
    /// schemes fall back to the largest group that divides it (as llama.cpp's k-quants
    /// fall back for rows that are not multiples of 256).
    pub fn dtype_for(self, name: &str, shape: &[u64]) -> DType {
        if shape.len() == 1 {
            return DType::F32;
        }
        let head = [LlamaTensor::TokenEmbd, LlamaTensor::Output]
            .iter()
            .any(|t| t.name() == name);
        let cols = shape.last().copied().unwrap_or(0);
        let symmetric = |largest: DType| {
            [DType::Q4G128, DType::Q4G64, DType::Q4G32]
                .into_iter()
                .skip_while(|d| *d != largest)
                .find(|d| cols % d.group().unwrap_or(1) as u64 == 0)
                .unwrap_or(DType::Q4G32)
        };
        match self {
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
            Self::Q8 => DType::Q8G32,
            _ if head => DType::Q8G32,
            Self::Q4g32a => DType::Q4G32A,
            Self::Q4g32 => DType::Q4G32,
            Self::Q4g64 => symmetric(DType::Q4G64),
            Self::Q4g128 => symmetric(DType::Q4G128),
        }
    }
}

/// Why a tensor could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The source encoding cannot be decoded.
    #[error("tensor {name}: {source}")]
    Decode {
        /// Tensor name.
        name: String,
        /// Decoder error.
        source: gguf::GgufError,
    },
    /// The tensor's row length is not a multiple of the target dtype's group.
    #[error("tensor {name}: {cols} columns are not a multiple of {dtype}'s group of {group}")]
    Group {
        /// Tensor name.
        name: String,
        /// Row length.
        cols: u64,
        /// Target dtype name.
        dtype: &'static str,
        /// Group size.
        group: usize,
    },
    /// The source bytes do not match the tensor's shape.
    #[error("tensor {0}: source bytes disagree with its shape")]
    Length(String),
    /// GPTQ refused the tensor.
    #[error("tensor {name}: {source}")]
    Gptq {
        /// Tensor name.
        name: String,
        /// Why.
        source: GptqError,
    },
    /// The plan names a tensor the source does not have.
    #[error("the recipe names {0}, which the model does not have")]
    UnknownTensor(String),
}

/// The Hessians `XᵀX` (scaled by any positive factor) of the inputs of a model's
/// matrices over calibration text, by tensor name (matrices reading the same input
/// share one).
#[derive(Clone, Debug, Default)]
pub struct Hessians {
    by_tensor: HashMap<String, Arc<Vec<f32>>>,
}

impl Hessians {
    /// Records `h` (`cols × cols`, row-major) for every tensor of `names`.
    pub fn insert(&mut self, names: &[String], h: Arc<Vec<f32>>) {
        for n in names {
            self.by_tensor.insert(n.clone(), Arc::clone(&h));
        }
    }

    /// The Hessian of tensor `name`'s inputs.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.by_tensor.get(name).map(|h| h.as_slice())
    }

    /// Tensors with a Hessian.
    pub fn len(&self) -> usize {
        self.by_tensor.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_tensor.is_empty()
    }

    const MAGIC: &'static [u8; 8] = b"GLHESS1\n";

    /// Writes them (each shared Hessian once, with the tensors reading it): calibration
    /// costs minutes, a recipe tried again reuses it.
    pub fn write_to(&self, mut out: impl std::io::Write) -> std::io::Result<()> {
        let mut groups: Vec<(Arc<Vec<f32>>, Vec<&str>)> = Vec::new();
        let mut names: Vec<(&String, &Arc<Vec<f32>>)> = self.by_tensor.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, h) in names {
            match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, h)) {
                Some((_, n)) => n.push(name),
                None => groups.push((Arc::clone(h), vec![name])),
            }
        }
        out.write_all(Self::MAGIC)?;
        out.write_all(&(groups.len() as u32).to_le_bytes())?;
        for (h, names) in groups {
            out.write_all(&(names.len() as u32).to_le_bytes())?;
            for n in names {
                out.write_all(&(n.len() as u32).to_le_bytes())?;
                out.write_all(n.as_bytes())?;
            }
            out.write_all(&(h.len() as u64).to_le_bytes())?;
            for x in h.iter() {
                out.write_all(&x.to_le_bytes())?;
            }
        }
        out.flush()
    }

    /// Reads what [`Hessians::write_to`] wrote.
    pub fn read_from(mut input: impl std::io::Read) -> std::io::Result<Self> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != Self::MAGIC {
            return Err(bad("not a Hessians file"));
        }
        let u32_at = |input: &mut dyn std::io::Read| -> std::io::Result<u32> {
            let mut b = [0u8; 4];
            input.read_exact(&mut b)?;
            Ok(u32::from_le_bytes(b))
        };
        let mut out = Self::default();
        for _ in 0..u32_at(&mut input)? {
            let mut names = Vec::new();
            for _ in 0..u32_at(&mut input)? {
                let len = u32_at(&mut input)? as usize;
                if len > 4096 {
                    return Err(bad("tensor name too long"));
                }
                let mut n = vec![0u8; len];
                input.read_exact(&mut n)?;
                names.push(String::from_utf8(n).map_err(|_| bad("tensor name not UTF-8"))?);
            }
            let mut b = [0u8; 8];
            input.read_exact(&mut b)?;
            let len = u64::from_le_bytes(b);
            if len > 1 << 32 {
                return Err(bad("Hessian too large"));
            }
            let mut bytes = vec![0u8; len as usize * 4];
            input.read_exact(&mut bytes)?;
            let h = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.insert(&names, Arc::new(h));
        }
        Ok(out)
    }
}

/// How to pack a model: a scheme, tensors given another dtype (a mixed recipe) and,
/// for GPTQ, the calibration Hessians.
#[derive(Clone, Debug)]
pub struct PackPlan {
    /// Every tensor's dtype unless [`PackPlan::dtypes`] names it.
    pub scheme: Scheme,
    /// Tensors packed with another dtype than the scheme's, by name.
    pub dtypes: BTreeMap<String, DType>,
    /// With Hessians, quantized matrices that have one go through GPTQ.
    pub hessians: Option<Hessians>,
    /// GPTQ's settings.
    pub gptq: GptqOptions,
}

impl PackPlan {
    /// `scheme` by round-to-nearest, every tensor its scheme's dtype.
    pub fn rtn(scheme: Scheme) -> Self {
        Self {
            scheme,
            dtypes: BTreeMap::new(),
            hessians: None,
            gptq: GptqOptions::default(),
        }
    }

    /// The dtype of tensor `name` of `shape`.
    pub fn dtype_for(&self, name: &str, shape: &[u64]) -> DType {
        self.dtypes
            .get(name)
            .copied()
            .unwrap_or_else(|| self.scheme.dtype_for(name, shape))
    }

    /// The scheme as recorded in the file: `q4g128`, `q4g128+gptq`, `mixed-q4g128+gptq`.
    pub fn name(&self) -> String {
        let method = if self.hessians.is_some() { "+gptq" } else { "" };
        let mixed = if self.dtypes.is_empty() { "" } else { "mixed-" };
        format!("{mixed}{}{method}", self.scheme.name())
    }

    /// The recipe as recorded in the file (provenance `recipe`): the method and every
    /// tensor packed with another dtype than the scheme's.
    pub fn recipe(&self) -> String {
        let mut s = match &self.hessians {
            Some(_) => format!(
                "gptq (block {}, damp {}, act-order {})",
                self.gptq.block, self.gptq.damp, self.gptq.act_order
            ),
            None => "round-to-nearest".into(),
        };
        let mut by_dtype: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, d) in &self.dtypes {
            by_dtype.entry(d.name()).or_default().push(name);
        }
        for (d, names) in by_dtype {
            s += &format!("; {d}: {}", names.join(" "));
        }
        s
    }
}

/// Decodes a source tensor to f32 values.
pub fn decode_f32(src: &Imported, t: &SourceTensor) -> Result<Vec<f32>, PackError> {
    let bytes = src.bytes(t);
    let n: u64 = t.shape.iter().product();
    let values: Vec<f32> = match t.encoding {
        Encoding::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Encoding::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Encoding::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Encoding::Glint(dtype) => {
            let m = Matrix::from_bytes(
                dtype,
                (n / t.shape.last().copied().unwrap_or(1)) as usize,
                *t.shape.last().unwrap_or(&1) as usize,
                bytes,
            )
            .map_err(|_| PackError::Length(t.name.clone()))?;
            let mut out = vec![0f32; n as usize];
            for (r, row) in out.chunks_exact_mut(m.cols).enumerate() {
                dequantize_row(&m, r, row);
            }
            out
        }
        Encoding::Gguf(ty) => {
            let mut out = vec![0f32; n as usize];
            gguf::dequantize_into(ty, bytes, &mut out).map_err(|source| PackError::Decode {
                name: t.name.clone(),
                source,
            })?;
            out
        }
    };
    if values.len() as u64 != n {
        return Err(PackError::Length(t.name.clone()));
    }
    Ok(values)
}

/// Packs one tensor into `dtype`, with GPTQ when `gptq` gives the Hessian of its
/// inputs and its settings.
pub fn pack_tensor(
    src: &Imported,
    t: &SourceTensor,
    dtype: DType,
    gptq_with: Option<(&[f32], GptqOptions)>,
) -> Result<TensorOut, PackError> {
    let n: u64 = t.shape.iter().product();
    if let Some(group) = dtype.group() {
        let cols = *t.shape.last().unwrap_or(&0);
        if !cols.is_multiple_of(group as u64) {
            return Err(PackError::Group {
                name: t.name.clone(),
                cols,
                dtype: dtype.name(),
                group,
            });
        }
    }
    if let (Some((h, opts)), true, [rows, cols]) = (gptq_with, dtype.is_quantized(), &t.shape[..]) {
        let (rows, cols) = (*rows as usize, *cols as usize);
        let q = gptq(dtype, &decode_f32(src, t)?, rows, cols, h, opts).map_err(|source| {
            PackError::Gptq {
                name: t.name.clone(),
                source,
            }
        })?;
        return Ok(TensorOut {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            bytes: q.bytes,
        });
    }
    let bytes = src.bytes(t);
    let transcode =
        |block: usize, push: &dyn Fn(&mut Planes, &[u8])| -> Result<Vec<u8>, PackError> {
            if bytes.len() as u64 != n / 32 * block as u64 {
                return Err(PackError::Length(t.name.clone()));
            }
            let mut p = Planes::default();
            bytes.chunks_exact(block).for_each(|b| push(&mut p, b));
            Ok(p.into_bytes(dtype, n))
        };
    let out = match (t.encoding, dtype) {
        (Encoding::Gguf(GgmlType::Q4_1), DType::Q4G32A) => transcode(20, &|p, b| {
            p.push_q4_1_block(b.try_into().expect("20-byte chunk"))
        })?,
        (Encoding::Gguf(GgmlType::Q4_0), DType::Q4G32) => transcode(18, &|p, b| {
            p.push_q4_0_block(b.try_into().expect("18-byte chunk"))
        })?,
        (Encoding::Gguf(GgmlType::Q8_0), DType::Q8G32) => transcode(34, &|p, b| {
            p.push_q8_0_block(b.try_into().expect("34-byte chunk"))
        })?,
        (Encoding::F32, DType::F32) if bytes.len() as u64 == 4 * n => bytes.to_vec(),
        (Encoding::Glint(from), to) if from == to => bytes.to_vec(),
        _ => quantize(dtype, &decode_f32(src, t)?),
    };
    Ok(TensorOut {
        name: t.name.clone(),
        dtype,
        shape: t.shape.clone(),
        bytes: out,
    })
}

/// Packs every tensor of `src` as `plan` says, calling `progress(i, name)` before each,
/// and returns the file's metadata and tensors ready for [`glint_format::write_glint`].
pub fn pack(
    src: &Imported,
    plan: &PackPlan,
    mut progress: impl FnMut(usize, &str),
) -> Result<(FileMeta, Vec<TensorOut>), PackError> {
    if let Some(name) = plan
        .dtypes
        .keys()
        .find(|n| !src.tensors.iter().any(|t| &t.name == *n))
    {
        return Err(PackError::UnknownTensor(name.clone()));
    }
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for (i, t) in src.tensors.iter().enumerate() {
        progress(i, &t.name);
        let h = plan.hessians.as_ref().and_then(|h| h.get(&t.name));
        let dtype = plan.dtype_for(&t.name, &t.shape);
        tensors.push(pack_tensor(src, t, dtype, h.map(|h| (h, plan.gptq)))?);
    }
    let mut provenance = src.provenance.clone();
    provenance.push(("scheme".into(), plan.name()));
    if plan.hessians.is_some() || !plan.dtypes.is_empty() {
        provenance.push(("recipe".into(), plan.recipe()));
    }
    provenance.push(("tool".into(), "glint-quantize".into()));
    provenance.push(("tool_version".into(), env!("CARGO_PKG_VERSION").into()));
    let meta = FileMeta {
        config: src.config,
        tokenizer: src.tokenizer.clone(),
        chat_template: src.chat_template.clone(),
        provenance,
    };
    Ok((meta, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessians_round_trip_sharing_kept() {
        let mut h = Hessians::default();
        h.insert(
            &["a".into(), "b".into()],
            Arc::new(vec![1.0, 2.0, 2.0, 5.0]),
        );
        h.insert(&["c".into()], Arc::new(vec![3.0]));
        let mut bytes = Vec::new();
        h.write_to(&mut bytes).unwrap();
        let back = Hessians::read_from(bytes.as_slice()).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back.get("b"), Some(&[1.0, 2.0, 2.0, 5.0][..]));
        assert_eq!(back.get("c"), Some(&[3.0][..]));
        assert!(Arc::ptr_eq(&back.by_tensor["a"], &back.by_tensor["b"]));
        assert!(Hessians::read_from(&bytes[..bytes.len() - 1]).is_err());
        assert!(Hessians::read_from(&b"GLHESS0\n"[..]).is_err());
    }
}
