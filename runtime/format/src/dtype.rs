//! Tensor element types and their in-file plane layout (docs/FORMAT.md, "Tensor data").

use crate::FormatError;

/// Every tensor start and every plane inside a tensor is aligned to this many bytes,
/// counted from the start of the file: the widest SIMD load is 64 bytes and wgpu's
/// default `min_storage_buffer_offset_alignment` is 256, so a plane can be bound as a
/// GPU buffer range straight out of the mapping.
pub const TENSOR_ALIGN: u64 = 256;

/// Elements in one int4/int8 block (one 16-byte nibble chunk, one 32-byte int8 chunk).
pub const BLOCK: usize = 32;

/// The element type of a tensor as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    /// IEEE f32.
    F32 = 0,
    /// IEEE f16.
    F16 = 1,
    /// int4, group 32, asymmetric: `x = d * q + m`, `q` in 0..=15, f16 `d` and `m`
    /// (the math of GGUF Q4_1).
    Q4G32A = 2,
    /// int4, group 32, symmetric: `x = d * (q - 8)`, f16 `d` (the math of GGUF Q4_0).
    Q4G32 = 3,
    /// int4, group 64, symmetric.
    Q4G64 = 4,
    /// int4, group 128, symmetric.
    Q4G128 = 5,
    /// int8, group 32, symmetric: `x = d * q`, f16 `d` (the math of GGUF Q8_0).
    Q8G32 = 6,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 7] = [
        Self::F32,
        Self::F16,
        Self::Q4G32A,
        Self::Q4G32,
        Self::Q4G64,
        Self::Q4G128,
        Self::Q8G32,
    ];

    /// Decodes the on-disk code.
    pub fn from_code(code: u32) -> Result<Self, FormatError> {
        Ok(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4G32A,
            3 => Self::Q4G32,
            4 => Self::Q4G64,
            5 => Self::Q4G128,
            6 => Self::Q8G32,
            _ => return Err(FormatError::UnknownDType(code)),
        })
    }

    /// Short lowercase name, as printed by `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q4G32A => "q4g32a",
            Self::Q4G32 => "q4g32",
            Self::Q4G64 => "q4g64",
            Self::Q4G128 => "q4g128",
            Self::Q8G32 => "q8g32",
        }
    }

    /// Elements sharing one scale, or `None` for float types.
    pub fn group(self) -> Option<usize> {
        match self {
            Self::F32 | Self::F16 => None,
            Self::Q4G32A | Self::Q4G32 | Self::Q8G32 => Some(32),
            Self::Q4G64 => Some(64),
            Self::Q4G128 => Some(128),
        }
    }

    /// True for the block-quantized types (stored as planes, matrices only).
    pub fn is_quantized(self) -> bool {
        self.group().is_some()
    }

    /// Bits per weight including scales and minimums.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::F32 => 32.0,
            Self::F16 => 16.0,
            Self::Q4G32A => 4.0 + 1.0, // f16 scale + f16 min per 32
            Self::Q4G32 => 4.0 + 16.0 / 32.0,
            Self::Q4G64 => 4.0 + 16.0 / 64.0,
            Self::Q4G128 => 4.0 + 16.0 / 128.0,
            Self::Q8G32 => 8.0 + 16.0 / 32.0,
        }
    }

    /// Where each plane of a tensor of `n` elements sits, relative to the tensor start.
    /// `n` must already be checked to be a multiple of the group (see [`PlaneLayout`]).
    pub fn plane_layout(self, n: u64) -> PlaneLayout {
        let align = |x: u64| x.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        match self {
            Self::F32 => PlaneLayout::single(n * 4),
            Self::F16 => PlaneLayout::single(n * 2),
            Self::Q4G32A | Self::Q4G32 | Self::Q4G64 | Self::Q4G128 | Self::Q8G32 => {
                let group = self.group().unwrap_or(BLOCK) as u64;
                let values = if self == Self::Q8G32 { n } else { n / 2 };
                let scales_at = align(values);
                let scales = n / group * 2;
                let (mins_at, mins) = if self == Self::Q4G32A {
                    (align(scales_at + scales), n / group * 2)
                } else {
                    (scales_at + scales, 0)
                };
                PlaneLayout {
                    values: (0, values),
                    scales: (scales_at, scales),
                    mins: (mins_at, mins),
                    total: mins_at + mins,
                }
            }
        }
    }
}

/// Byte ranges `(offset, len)` of the planes of one tensor, relative to its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Packed values: f32/f16 elements, int4 nibbles or int8 values.
    pub values: (u64, u64),
    /// f16 scales, one per group (empty for float types).
    pub scales: (u64, u64),
    /// f16 minimums, one per group (only [`DType::Q4G32A`]).
    pub mins: (u64, u64),
    /// Length of the whole tensor in bytes.
    pub total: u64,
}

impl PlaneLayout {
    fn single(len: u64) -> Self {
        Self {
            values: (0, len),
            scales: (len, 0),
            mins: (len, 0),
            total: len,
        }
    }
}

/// A row-major `[rows, cols]` weight matrix borrowed from the file, split into its planes.
///
/// Int4 planes hold, for every row and every 32-element block `b` of it, 16 bytes whose
/// byte `j` carries element `32b + j` in its low nibble and `32b + j + 16` in its high
/// nibble (GGUF's order inside a block). Scales and minimums are little-endian f16, one
/// per group, in row-major order. Kernels read planes through unaligned loads, so any
/// byte slice works; in a mapped file every plane is [`TENSOR_ALIGN`]-aligned.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Element type.
    pub dtype: DType,
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of the group for quantized types).
    pub cols: usize,
    /// Values plane.
    pub values: &'a [u8],
    /// Scales plane (empty for float types).
    pub scales: &'a [u8],
    /// Minimums plane (only for [`DType::Q4G32A`]).
    pub mins: &'a [u8],
}

impl<'a> Matrix<'a> {
    /// Splits the bytes of a whole tensor into planes; checks the length matches.
    pub fn from_bytes(
        dtype: DType,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Result<Self, FormatError> {
        if let Some(g) = dtype.group()
            && (!cols.is_multiple_of(g) || !cols.is_multiple_of(BLOCK))
        {
            return Err(FormatError::BadShape(
                "quantized row length is not a multiple of its group",
            ));
        }
        let n = (rows as u64)
            .checked_mul(cols as u64)
            .ok_or(FormatError::BadShape("element count overflows"))?;
        let l = dtype.plane_layout(n);
        if l.total != bytes.len() as u64 {
            return Err(FormatError::BadShape(
                "tensor length disagrees with its dtype and shape",
            ));
        }
        let plane = |(at, len): (u64, u64)| &bytes[at as usize..(at + len) as usize];
        Ok(Self {
            dtype,
            rows,
            cols,
            values: plane(l.values),
            scales: plane(l.scales),
            mins: plane(l.mins),
        })
    }
}
