//! GGUF (versions 2 and 3) reader: zero-copy parsing of a memory-mapped file and the
//! reference dequantization of the common ggml tensor types.
//!
//! A GGUF file is little-endian: the magic `GGUF`, a `u32` version, a `u64` tensor count
//! and a `u64` metadata count, then the metadata key/value pairs, then one info record
//! per tensor (name, dims, ggml type, offset), then padding up to `general.alignment`
//! (32 unless set) where the tensor data section starts. A tensor's offset counts from
//! the start of that section. Dims are in ggml order: `dims[0]` is the contiguous one.
//!
//! Every length, count and offset read from the file is checked against the buffer
//! before it is used: hostile or truncated input gives a [`GgufError`], never a panic,
//! and no allocation is sized by a count that the remaining bytes could not hold.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use glint_pack::gguf::{GgufFile, dequantize};
//! let bytes = std::fs::read("model.gguf")?;
//! let file = GgufFile::parse(&bytes)?;
//! let layers = file.get_u32("llama.block_count");
//! let mut weights = Vec::new();
//! if let Some(t) = file.tensor("token_embd.weight") {
//!     dequantize(t, &mut weights)?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;

use half::{bf16, f16};

/// The `general.alignment` a file without that key uses.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The most dims a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// How deep arrays may nest inside one metadata value (arrays of arrays of ...). Bounds
/// the parser's recursion, so hostile input cannot overflow the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;

const MAGIC: &[u8; 4] = b"GGUF";

/// Smallest possible metadata pair: key length (8), value type (4), a 1-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest possible tensor info: name length (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// Everything that can be wrong with a GGUF file or a dequantization request.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    /// Only versions 2 and 3 (little-endian) are read.
    #[error("unsupported GGUF version {0} (only 2 and 3, little-endian)")]
    UnsupportedVersion(u32),
    /// A read of `needed` bytes at byte `offset` runs past the end of the file.
    #[error("truncated file: {needed} bytes needed at offset {offset}")]
    Truncated {
        /// Where the read starts.
        offset: usize,
        /// How many bytes it needs.
        needed: u64,
    },
    /// A count (of metadata pairs, tensors or array elements) that the rest of the file
    /// is too short to hold.
    #[error("{what} count {count} at offset {offset} exceeds what the remaining bytes can hold")]
    CountTooLarge {
        /// What is being counted.
        what: &'static str,
        /// The count read from the file.
        count: u64,
        /// Where the counted items start.
        offset: usize,
    },
    /// A metadata key or tensor name is not valid UTF-8.
    #[error("string at offset {0} is not valid UTF-8")]
    InvalidUtf8(usize),
    /// A metadata value type code this reader does not know.
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata arrays nested deeper than {MAX_ARRAY_DEPTH}")]
    NestingTooDeep,
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// `general.alignment` is not an integer power of two.
    #[error("general.alignment must be an integer power of two")]
    BadAlignment,
    /// The same tensor name appears twice.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// A tensor has more than [`MAX_DIMS`] dims.
    #[error("tensor {tensor:?} has {n_dims} dims (at most {MAX_DIMS})")]
    TooManyDims {
        /// The tensor's name.
        tensor: String,
        /// Its dim count.
        n_dims: u32,
    },
    /// A ggml type code this reader does not know.
    #[error("tensor {tensor:?} has unknown ggml type {code}")]
    UnknownGgmlType {
        /// The tensor's name.
        tensor: String,
        /// The type code.
        code: u32,
    },
    /// A tensor's element count or byte size overflows, or its first dim is not a
    /// multiple of its type's block size.
    #[error("tensor {tensor:?}: bad shape {dims:?} for {ggml_type:?}")]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// Its dims.
        dims: Vec<u64>,
        /// Its type.
        ggml_type: GgmlType,
    },
    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("tensor {tensor:?}: offset {offset} is not a multiple of the alignment")]
    MisalignedTensor {
        /// The tensor's name.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
    },
    /// A tensor's bytes run past the end of the file.
    #[error(
        "tensor {tensor:?}: bytes [{offset}, +{size}) run past the data section ({available} bytes)"
    )]
    TensorOutOfBounds {
        /// The tensor's name.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// The data section's length.
        available: usize,
    },
    /// [`dequantize`] was given a type it does not decode.
    #[error("dequantization of {0:?} is not supported")]
    Unsupported(GgmlType),
    /// [`dequantize`] was given a byte length or element count that does not fit the
    /// type's blocks.
    #[error("{ggml_type:?}: {bytes} bytes do not hold {elements} elements")]
    LengthMismatch {
        /// The type.
        ggml_type: GgmlType,
        /// The element count asked for.
        elements: u64,
        /// The bytes given.
        bytes: usize,
    },
}

/// The type code of a metadata value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// `u8`.
    U8 = 0,
    /// `i8`.
    I8 = 1,
    /// `u16`.
    U16 = 2,
    /// `i16`.
    I16 = 3,
    /// `u32`.
    U32 = 4,
    /// `i32`.
    I32 = 5,
    /// `f32`.
    F32 = 6,
    /// One byte, nonzero is true.
    Bool = 7,
    /// `u64` length, then that many bytes (UTF-8 by the spec).
    String = 8,
    /// `u32` element type, `u64` count, then the elements.
    Array = 9,
    /// `u64`.
    U64 = 10,
    /// `i64`.
    I64 = 11,
    /// `f64`.
    F64 = 12,
}

impl ValueType {
    /// Decodes the on-disk code.
    pub fn from_code(code: u32) -> Result<Self, GgufError> {
        Ok(match code {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return Err(GgufError::UnknownValueType(code)),
        })
    }

    /// Bytes of one value of a fixed-size type, `None` for strings and arrays.
    fn fixed_size(self) -> Option<usize> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }

    /// The fewest bytes one value of this type can take.
    fn min_size(self) -> usize {
        match self {
            Self::String => 8,
            Self::Array => 4 + 8,
            _ => self.fixed_size().unwrap_or(1),
        }
    }
}

/// One metadata value, borrowing strings and arrays from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// The raw bytes of a string: UTF-8 by the spec, but not checked, since some
    /// converters wrote vocabularies with invalid entries. See [`Value::as_str`].
    String(&'a [u8]),
    /// An array, decoded lazily.
    Array(Array<'a>),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value's type code.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(_) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits, as `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An `f32`, or an `f64` rounded to `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// An `f32` or `f64`, as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string's raw bytes.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Self::String(v) => Some(v),
            _ => None,
        }
    }

    /// A string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    /// An array.
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A metadata array: validated when the file is parsed, decoded element by element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Array<'a> {
    elem: ValueType,
    len: usize,
    raw: &'a [u8],
}

impl<'a> Array<'a> {
    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            reader: Reader::new(self.raw),
            elem: self.elem,
            left: self.len,
        }
    }

    /// Every element as `T`, or `None` if any is not an integer that fits in `T`.
    fn ints<T: TryFrom<i64>>(&self) -> Option<Vec<T>> {
        self.iter().map(|v| T::try_from(v.as_i64()?).ok()).collect()
    }

    /// Every element as `u32`, or `None` unless all are integers that fit.
    pub fn to_u32_vec(&self) -> Option<Vec<u32>> {
        self.ints()
    }

    /// Every element as `i32`, or `None` unless all are integers that fit.
    pub fn to_i32_vec(&self) -> Option<Vec<i32>> {
        self.ints()
    }

    /// Every element as `f32`, or `None` unless all are floats.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        self.iter().map(|v| v.as_f32()).collect()
    }

    /// Every element as `&str`, or `None` unless all are UTF-8 strings.
    pub fn to_str_vec(&self) -> Option<Vec<&'a str>> {
        self.iter().map(|v| v.as_str()).collect()
    }

    /// Every element's raw string bytes, or `None` unless all are strings.
    pub fn to_bytes_vec(&self) -> Option<Vec<&'a [u8]>> {
        self.iter().map(|v| v.as_bytes()).collect()
    }
}

impl<'a> IntoIterator for &Array<'a> {
    type Item = Value<'a>;
    type IntoIter = ArrayIter<'a>;

    fn into_iter(self) -> ArrayIter<'a> {
        self.iter()
    }
}

/// Iterator over the elements of an [`Array`].
#[derive(Clone, Debug)]
pub struct ArrayIter<'a> {
    reader: Reader<'a>,
    elem: ValueType,
    left: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The bytes were validated by `read_value` at parse time, so this cannot fail;
        // if it somehow did, the iteration just ends.
        match read_value(&mut self.reader, self.elem, 0) {
            Ok(v) => Some(v),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// A ggml tensor element type, with ggml's codes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// IEEE f32.
    F32 = 0,
    /// IEEE f16.
    F16 = 1,
    /// 32 × 4-bit, f16 scale: `x = d * (q - 8)`.
    Q4_0 = 2,
    /// 32 × 4-bit, f16 scale and min: `x = d * q + m`.
    Q4_1 = 3,
    /// 32 × 5-bit, f16 scale.
    Q5_0 = 6,
    /// 32 × 5-bit, f16 scale and min.
    Q5_1 = 7,
    /// 32 × 8-bit, f16 scale: `x = d * q`.
    Q8_0 = 8,
    /// 32 × 8-bit, f16 scale and f16 `d * sum(q)`.
    Q8_1 = 9,
    /// k-quant, 256 × 2-bit.
    Q2_K = 10,
    /// k-quant, 256 × 3-bit.
    Q3_K = 11,
    /// k-quant, 256 × 4-bit in 8 sub-blocks with 6-bit scales and mins.
    Q4_K = 12,
    /// k-quant, 256 × 5-bit.
    Q5_K = 13,
    /// k-quant, 256 × 6-bit in 16 sub-blocks with i8 scales.
    Q6_K = 14,
    /// k-quant, 256 × 8-bit (f32 scale, block sums).
    Q8_K = 15,
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS = 16,
    /// i-quant, 2.31 bits per weight.
    IQ2_XS = 17,
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS = 18,
    /// i-quant, 1.56 bits per weight.
    IQ1_S = 19,
    /// 32 × 4-bit non-linear.
    IQ4_NL = 20,
    /// i-quant, 3.44 bits per weight.
    IQ3_S = 21,
    /// i-quant, 2.5 bits per weight.
    IQ2_S = 22,
    /// 256 × 4-bit non-linear with sub-block scales.
    IQ4_XS = 23,
    /// `i8`.
    I8 = 24,
    /// `i16`.
    I16 = 25,
    /// `i32`.
    I32 = 26,
    /// `i64`.
    I64 = 27,
    /// IEEE f64.
    F64 = 28,
    /// i-quant, 1.75 bits per weight.
    IQ1_M = 29,
    /// bfloat16.
    BF16 = 30,
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34,
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35,
    /// 32 × fp4 (e2m1) with a shared e8m0 exponent.
    MXFP4 = 39,
}

impl GgmlType {
    /// Decodes ggml's type code; `None` for codes this reader does not know (including
    /// the removed 4, 5 and 31..=33, 36..=38).
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            16 => Self::IQ2_XXS,
            17 => Self::IQ2_XS,
            18 => Self::IQ3_XXS,
            19 => Self::IQ1_S,
            20 => Self::IQ4_NL,
            21 => Self::IQ3_S,
            22 => Self::IQ2_S,
            23 => Self::IQ4_XS,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            29 => Self::IQ1_M,
            30 => Self::BF16,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            39 => Self::MXFP4,
            _ => return None,
        })
    }

    /// ggml's type code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Elements per block (1 for the plain types), as ggml's `blck_size`.
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Bytes per block, as ggml's `type_size`.
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            I8 => 1,
            F16 | BF16 | I16 => 2,
            F32 | I32 => 4,
            F64 | I64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            IQ4_NL => 18,
            MXFP4 => 17,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
        }
    }

    /// Bytes that `n` elements take, or `None` if `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn byte_size(self, n: u64) -> Option<u64> {
        let block = self.block_size();
        if !n.is_multiple_of(block) {
            return None;
        }
        (n / block).checked_mul(self.type_size())
    }

    /// True for the types [`dequantize`] decodes.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q8_0 | Q4_K | Q6_K)
    }
}

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo<'a> {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Dims in ggml order: `dims[0]` is the contiguous (fastest-varying) one, so a
    /// `[cols, rows]` matrix is stored row by row.
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the file's data section.
    pub offset: u64,
    /// Exactly the tensor's bytes.
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// The number of elements (the product of the dims; 1 for a tensor with no dims).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }
}

/// A parsed GGUF file, borrowing everything from the caller's bytes.
#[derive(Clone, Debug)]
pub struct GgufFile<'a> {
    version: u32,
    alignment: u64,
    data_offset: usize,
    metadata: Vec<(&'a str, Value<'a>)>,
    metadata_index: HashMap<&'a str, usize>,
    tensors: Vec<TensorInfo<'a>>,
    tensor_index: HashMap<&'a str, usize>,
}

impl<'a> GgufFile<'a> {
    /// Parses and validates a whole GGUF file: header, metadata, tensor infos, and
    /// every tensor's bounds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut r = Reader::new(bytes);
        if r.take(4)? != MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;

        let kv_count = r.check_count("metadata pair", kv_count, MIN_KV_BYTES)?;
        let mut metadata = Vec::with_capacity(kv_count);
        let mut metadata_index = HashMap::with_capacity(kv_count);
        for _ in 0..kv_count {
            let key = r.str()?;
            let ty = ValueType::from_code(r.u32()?)?;
            let value = read_value(&mut r, ty, 0)?;
            if metadata_index.insert(key, metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key.to_owned()));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => metadata[i]
                .1
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or(GgufError::BadAlignment)?,
        };

        struct Pending<'a> {
            name: &'a str,
            dims: Vec<u64>,
            ggml_type: GgmlType,
            offset: u64,
            size: u64,
        }
        let tensor_count = r.check_count("tensor info", tensor_count, MIN_TENSOR_INFO_BYTES)?;
        let mut pending = Vec::with_capacity(tensor_count);
        let mut tensor_index = HashMap::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = r.str()?;
            let n_dims = r.u32()?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    tensor: name.to_owned(),
                    n_dims,
                });
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let code = r.u32()?;
            let ggml_type =
                GgmlType::from_code(code).ok_or_else(|| GgufError::UnknownGgmlType {
                    tensor: name.to_owned(),
                    code,
                })?;
            let offset = r.u64()?;
            let size = tensor_size(&dims, ggml_type).ok_or_else(|| GgufError::BadShape {
                tensor: name.to_owned(),
                dims: dims.clone(),
                ggml_type,
            })?;
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedTensor {
                    tensor: name.to_owned(),
                    offset,
                });
            }
            if tensor_index.insert(name, pending.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name.to_owned()));
            }
            pending.push(Pending {
                name,
                dims,
                ggml_type,
                offset,
                size,
            });
        }

        // The data section starts at the next multiple of the alignment. A file with no
        // tensor data may end before it, so an absent section is just empty here and
        // any tensor that needs bytes fails its bounds check below.
        let data_offset = align_up(r.pos, alignment).unwrap_or(usize::MAX);
        let data = bytes.get(data_offset..).unwrap_or(&[]);
        let mut tensors = Vec::with_capacity(pending.len());
        for p in pending {
            let slice = usize::try_from(p.offset)
                .ok()
                .zip(usize::try_from(p.size).ok())
                .and_then(|(start, len)| data.get(start..start.checked_add(len)?));
            let Some(slice) = slice else {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: p.name.to_owned(),
                    offset: p.offset,
                    size: p.size,
                    available: data.len(),
                });
            };
            tensors.push(TensorInfo {
                name: p.name,
                dims: p.dims,
                ggml_type: p.ggml_type,
                offset: p.offset,
                data: slice,
            });
        }

        Ok(Self {
            version,
            alignment,
            data_offset,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default [`DEFAULT_ALIGNMENT`]).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts, in bytes from the start of the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// All metadata pairs in file order.
    pub fn metadata_entries(&self) -> &[(&'a str, Value<'a>)] {
        &self.metadata
    }

    /// The metadata value under `key`.
    pub fn metadata(&self, key: &str) -> Option<&Value<'a>> {
        let &i = self.metadata_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// An integer value under `key` that fits in `u32`, whatever its integer type.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        u32::try_from(self.metadata(key)?.as_u64()?).ok()
    }

    /// A non-negative integer value under `key`, whatever its integer type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata(key)?.as_u64()
    }

    /// An integer value under `key` that fits in `i32`, whatever its integer type.
    pub fn get_i32(&self, key: &str) -> Option<i32> {
        i32::try_from(self.metadata(key)?.as_i64()?).ok()
    }

    /// An integer value under `key` that fits in `i64`, whatever its integer type.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.metadata(key)?.as_i64()
    }

    /// An `f32` (or `f64`, rounded) value under `key`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.metadata(key)?.as_f32()
    }

    /// A bool value under `key`.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key)?.as_bool()
    }

    /// A UTF-8 string value under `key`.
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.metadata(key)?.as_str()
    }

    /// An array value under `key`.
    pub fn get_array(&self, key: &str) -> Option<&Array<'a>> {
        self.metadata(key)?.as_array()
    }

    /// An array of UTF-8 strings under `key`; `None` if any element is not one.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&'a str>> {
        self.get_array(key)?.to_str_vec()
    }

    /// An array of integers that all fit in `i32` under `key`, whatever their type.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get_array(key)?.to_i32_vec()
    }

    /// An array of integers that all fit in `u32` under `key`, whatever their type.
    pub fn get_u32_array(&self, key: &str) -> Option<Vec<u32>> {
        self.get_array(key)?.to_u32_vec()
    }

    /// An array of floats under `key`.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?.to_f32_vec()
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        let &i = self.tensor_index.get(name)?;
        self.tensors.get(i)
    }
}

/// Bytes of a tensor with these dims: `None` if the element count overflows ggml's
/// `int64_t`, `dims[0]` is not a whole number of blocks, or the size overflows.
fn tensor_size(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let n = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
    if n > i64::MAX as u64
        || !dims
            .first()
            .copied()
            .unwrap_or(1)
            .is_multiple_of(ty.block_size())
    {
        return None;
    }
    ty.byte_size(n)
}

fn align_up(pos: usize, alignment: u64) -> Option<usize> {
    let a = usize::try_from(alignment).ok()?;
    pos.checked_next_multiple_of(a)
}

/// A bounds-checked cursor over the file.
#[derive(Clone, Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|len| self.pos.checked_add(len));
        match end.and_then(|end| Some((end, self.buf.get(self.pos..end)?))) {
            Some((end, s)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                offset: self.pos,
                needed: n,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], GgufError> {
        let len = self.u64()?;
        self.take(len)
    }

    /// A string that must be UTF-8 (keys and tensor names).
    fn str(&mut self) -> Result<&'a str, GgufError> {
        let at = self.pos;
        std::str::from_utf8(self.bytes()?).map_err(|_| GgufError::InvalidUtf8(at))
    }

    /// `count` items of at least `min_size` bytes each must fit in the rest of the file.
    fn check_count(
        &self,
        what: &'static str,
        count: u64,
        min_size: usize,
    ) -> Result<usize, GgufError> {
        usize::try_from(count)
            .ok()
            .filter(|&c| {
                c.checked_mul(min_size)
                    .is_some_and(|b| b <= self.remaining())
            })
            .ok_or(GgufError::CountTooLarge {
                what,
                count,
                offset: self.pos,
            })
    }
}

/// Reads (and fully validates) one value of type `ty`; `depth` counts enclosing arrays.
fn read_value<'a>(r: &mut Reader<'a>, ty: ValueType, depth: usize) -> Result<Value<'a>, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(r.array()?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(r.array()?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(r.array()?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.array()?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(r.array()?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(r.array()?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(r.array()?)),
        ValueType::Bool => Value::Bool(u8::from_le_bytes(r.array()?) != 0),
        ValueType::String => Value::String(r.bytes()?),
        ValueType::U64 => Value::U64(u64::from_le_bytes(r.array()?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.array()?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.array()?)),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep);
            }
            let elem = ValueType::from_code(r.u32()?)?;
            let count = r.u64()?;
            let len = r.check_count("array element", count, elem.min_size())?;
            let start = r.pos;
            match elem.fixed_size() {
                // `check_count` made sure `len * size` fits in the rest of the file.
                Some(size) => {
                    r.take((len * size) as u64)?;
                }
                // Each element takes at least 8 bytes, so this loop is bounded by the
                // file length whatever the count says.
                None => {
                    for _ in 0..len {
                        read_value(r, elem, depth + 1)?;
                    }
                }
            }
            Value::Array(Array {
                elem,
                len,
                raw: r.buf.get(start..r.pos).unwrap_or(&[]),
            })
        }
    })
}

/// Decodes a tensor into `out` (cleared first; `n_elements` values, in storage order)
/// following ggml's reference `dequantize_row_*`. Supported: F32, F16, BF16, Q4_0,
/// Q4_1, Q8_0, Q4_K, Q6_K; other types give [`GgufError::Unsupported`].
pub fn dequantize(info: &TensorInfo<'_>, out: &mut Vec<f32>) -> Result<(), GgufError> {
    let ty = info.ggml_type;
    if !ty.can_dequantize() {
        return Err(GgufError::Unsupported(ty));
    }
    let elements = info.n_elements();
    let mismatch = GgufError::LengthMismatch {
        ggml_type: ty,
        elements,
        bytes: info.data.len(),
    };
    // Checking the byte length first bounds the allocation by the tensor's real size.
    if ty.byte_size(elements) != Some(info.data.len() as u64) {
        return Err(mismatch);
    }
    let n = usize::try_from(elements).map_err(|_| mismatch)?;
    out.clear();
    out.resize(n, 0.0);
    dequantize_into(ty, info.data, out)
}

/// Decodes `out.len()` elements of type `ty` from `data`, which must hold exactly that
/// many (a whole number of blocks), following ggml's reference `dequantize_row_*`. Works
/// on any block-aligned run, e.g. one row of a matrix.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    if !ty.can_dequantize() {
        return Err(GgufError::Unsupported(ty));
    }
    if ty.byte_size(out.len() as u64) != Some(data.len() as u64) {
        return Err(GgufError::LengthMismatch {
            ggml_type: ty,
            elements: out.len() as u64,
            bytes: data.len(),
        });
    }
    let block = ty.block_size() as usize;
    let blocks = out
        .chunks_exact_mut(block)
        .zip(data.chunks_exact(ty.type_size() as usize));
    match ty {
        GgmlType::F32 => {
            for (y, b) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, b) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (y, b) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => blocks.for_each(|(y, b)| dequant_q8_0(b, y)),
        GgmlType::Q4_0 => blocks.for_each(|(y, b)| dequant_q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(y, b)| dequant_q4_1(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(y, b)| dequant_q4_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(y, b)| dequant_q6_k(b, y)),
        _ => return Err(GgufError::Unsupported(ty)),
    }
    Ok(())
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `block_q8_0 { f16 d; i8 qs[32]; }`: `y = qs * d`.
fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_q4_0 { f16 d; u8 qs[16]; }`: low nibbles are elements 0..16, high 16..32,
/// `y = (q - 8) * d`.
fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
        *l = f32::from(i16::from(q & 0x0f) - 8) * d;
        *h = f32::from(i16::from(q >> 4) - 8) * d;
    }
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16]; }`: nibbles as Q4_0, `y = q * d + m`.
fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let (lo, hi) = y.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
        *l = f32::from(q & 0x0f) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) from the
/// 12 packed bytes of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`: 8 sub-blocks of 32;
/// each 32 bytes of `qs` hold two sub-blocks (low nibbles, then high),
/// `y = d * sc * q - dmin * m`.
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (j, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = y.split_at_mut(32);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(q) {
            *l = d1 * f32::from(q & 0x0f) - m1;
            *h = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`: two halves of 128,
/// each from 64 bytes of `ql` (low 4 bits), 32 of `qh` (high 2 bits) and 8 scales,
/// `y = d * scale * (q - 32)` with one scale per 16 elements.
fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    let halves = y
        .chunks_exact_mut(128)
        .zip(b[0..128].chunks_exact(64))
        .zip(b[128..192].chunks_exact(32))
        .zip(b[192..208].chunks_exact(8));
    for (((y, ql), qh), sc) in halves {
        let sc = |i: usize| f32::from(sc[i] as i8);
        for l in 0..32 {
            let is = l / 16;
            let q1 = i16::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i16::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i16::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i16::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc(is) * f32::from(q1);
            y[l + 32] = d * sc(is + 2) * f32::from(q2);
            y[l + 64] = d * sc(is + 4) * f32::from(q3);
            y[l + 96] = d * sc(is + 6) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata value for the test writer.
    #[derive(Clone)]
    enum V {
        U8(u8),
        I8(i8),
        U16(u16),
        I16(i16),
        U32(u32),
        I32(i32),
        F32(f32),
        Bool(bool),
        Str(&'static str),
        /// Element type code, elements (written without their type codes).
        Arr(u32, Vec<V>),
        U64(u64),
        I64(i64),
        F64(f64),
    }

    impl V {
        fn code(&self) -> u32 {
            match self {
                V::U8(_) => 0,
                V::I8(_) => 1,
                V::U16(_) => 2,
                V::I16(_) => 3,
                V::U32(_) => 4,
                V::I32(_) => 5,
                V::F32(_) => 6,
                V::Bool(_) => 7,
                V::Str(_) => 8,
                V::Arr(..) => 9,
                V::U64(_) => 10,
                V::I64(_) => 11,
                V::F64(_) => 12,
            }
        }

        fn write(&self, out: &mut Vec<u8>) {
            match self {
                V::U8(v) => out.extend(v.to_le_bytes()),
                V::I8(v) => out.extend(v.to_le_bytes()),
                V::U16(v) => out.extend(v.to_le_bytes()),
                V::I16(v) => out.extend(v.to_le_bytes()),
                V::U32(v) => out.extend(v.to_le_bytes()),
                V::I32(v) => out.extend(v.to_le_bytes()),
                V::F32(v) => out.extend(v.to_le_bytes()),
                V::Bool(v) => out.push(u8::from(*v)),
                V::Str(s) => put_str(out, s),
                V::Arr(elem, items) => {
                    out.extend(elem.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for it in items {
                        it.write(out);
                    }
                }
                V::U64(v) => out.extend(v.to_le_bytes()),
                V::I64(v) => out.extend(v.to_le_bytes()),
                V::F64(v) => out.extend(v.to_le_bytes()),
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A tiny GGUF writer: metadata, then tensors laid out at aligned offsets.
    struct Writer {
        version: u32,
        alignment: usize,
        kvs: Vec<(&'static str, V)>,
        tensors: Vec<(&'static str, Vec<u64>, u32, Vec<u8>)>,
    }

    impl Writer {
        fn new() -> Self {
            Self {
                version: 3,
                alignment: 32,
                kvs: Vec::new(),
                tensors: Vec::new(),
            }
        }

        fn kv(mut self, key: &'static str, v: V) -> Self {
            self.kvs.push((key, v));
            self
        }

        fn tensor(mut self, name: &'static str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
            self.tensors.push((name, dims.to_vec(), ty, data));
            self
        }

        fn build(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kvs.len() as u64).to_le_bytes());
            for (k, v) in &self.kvs {
                put_str(&mut out, k);
                out.extend(v.code().to_le_bytes());
                v.write(&mut out);
            }
            let mut offset = 0usize;
            let mut offsets = Vec::new();
            for (name, dims, ty, data) in &self.tensors {
                put_str(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(ty.to_le_bytes());
                out.extend((offset as u64).to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len()).next_multiple_of(self.alignment);
            }
            let start = out.len().next_multiple_of(self.alignment);
            for ((.., data), at) in self.tensors.iter().zip(offsets) {
                out.resize(start + at, 0);
                out.extend(data);
            }
            out
        }
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    fn sample() -> Writer {
        let f32_data: Vec<u8> = [1.0f32, -2.5, 3.25, 0.0, 7.0, -0.125]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut q8 = f16_bytes(0.5).to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        Writer::new()
            .kv("general.architecture", V::Str("llama"))
            .kv("u8", V::U8(200))
            .kv("i8", V::I8(-5))
            .kv("u16", V::U16(60000))
            .kv("i16", V::I16(-300))
            .kv("llama.block_count", V::U32(30))
            .kv("i32", V::I32(-70000))
            .kv("eps", V::F32(1e-5))
            .kv("flag", V::Bool(true))
            .kv("big", V::U64(1 << 40))
            .kv("neg", V::I64(-(1 << 40)))
            .kv("f64", V::F64(0.25))
            .kv(
                "tokens",
                V::Arr(8, vec![V::Str("a"), V::Str("Ġb"), V::Str("<s>")]),
            )
            .kv("types", V::Arr(5, vec![V::I32(1), V::I32(-2), V::I32(3)]))
            .kv("small", V::Arr(0, vec![V::U8(1), V::U8(255)]))
            .kv(
                "nested",
                V::Arr(
                    9,
                    vec![
                        V::Arr(6, vec![V::F32(1.5), V::F32(2.5)]),
                        V::Arr(8, vec![V::Str("x")]),
                        V::Arr(4, vec![]),
                    ],
                ),
            )
            .tensor("a.weight", &[3, 2], 0, f32_data)
            .tensor("q8", &[32], 8, q8)
    }

    #[test]
    fn parses_metadata_of_every_type() {
        let bytes = sample().build();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset() % 32, 0);
        assert_eq!(f.metadata_entries().len(), 16);
        assert_eq!(f.get_str("general.architecture"), Some("llama"));
        assert_eq!(f.get_u32("llama.block_count"), Some(30));
        assert_eq!(f.get_u32("u8"), Some(200));
        assert_eq!(f.get_u32("u16"), Some(60000));
        assert_eq!(f.get_i32("i8"), Some(-5));
        assert_eq!(f.get_i32("i16"), Some(-300));
        assert_eq!(f.get_i32("i32"), Some(-70000));
        assert_eq!(f.get_u32("i32"), None);
        assert_eq!(f.get_u32("big"), None);
        assert_eq!(f.get_u64("big"), Some(1 << 40));
        assert_eq!(f.get_i64("neg"), Some(-(1 << 40)));
        assert_eq!(f.get_f32("eps"), Some(1e-5));
        assert_eq!(f.metadata("f64"), Some(&Value::F64(0.25)));
        assert_eq!(f.get_bool("flag"), Some(true));
        assert_eq!(f.get_str("flag"), None);
        assert_eq!(f.get_u32("missing"), None);
        assert_eq!(f.get_str_array("tokens"), Some(vec!["a", "Ġb", "<s>"]));
        assert_eq!(f.get_i32_array("types"), Some(vec![1, -2, 3]));
        assert_eq!(f.get_u32_array("types"), None);
        assert_eq!(f.get_i32_array("small"), Some(vec![1, 255]));
        assert_eq!(f.get_str_array("types"), None);
        let nested = f.get_array("nested").unwrap();
        assert_eq!(nested.elem_type(), ValueType::Array);
        assert_eq!(nested.len(), 3);
        let inner: Vec<Value> = nested.iter().collect();
        assert_eq!(
            inner[0].as_array().unwrap().to_f32_vec(),
            Some(vec![1.5, 2.5])
        );
        assert_eq!(inner[1].as_array().unwrap().to_str_vec(), Some(vec!["x"]));
        assert!(inner[2].as_array().unwrap().is_empty());
    }

    #[test]
    fn tensors_are_exact_slices() {
        let w = sample();
        let bytes = w.build();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.tensors().len(), 2);
        let a = f.tensor("a.weight").unwrap();
        assert_eq!(a.dims, vec![3, 2]);
        assert_eq!(a.ggml_type, GgmlType::F32);
        assert_eq!(a.n_elements(), 6);
        assert_eq!(a.data, &w.tensors[0].3[..]);
        let q = &f.tensors()[1];
        assert_eq!(q.name, "q8");
        assert_eq!(q.ggml_type, GgmlType::Q8_0);
        assert_eq!(q.offset, 32);
        assert_eq!(q.data, &w.tensors[1].3[..]);
        let mut out = Vec::new();
        dequantize(a, &mut out).unwrap();
        assert_eq!(out, [1.0, -2.5, 3.25, 0.0, 7.0, -0.125]);
    }

    #[test]
    fn version_2_and_custom_alignment() {
        let mut w = sample().kv("general.alignment", V::U32(64));
        w.version = 2;
        w.alignment = 64;
        let bytes = w.build();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!((f.version(), f.alignment()), (2, 64));
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.tensors()[1].offset, 64);
        assert_eq!(f.tensors()[1].data, &w.tensors[1].3[..]);
    }

    #[test]
    fn no_tensors_and_no_padding() {
        let bytes = Writer::new().kv("k", V::U8(1)).build();
        let f = GgufFile::parse(&bytes).unwrap();
        assert!(f.tensors().is_empty());
        assert_eq!(f.get_u32("k"), Some(1));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().build();
        for len in 0..bytes.len() {
            assert!(GgufFile::parse(&bytes[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn corrupting_any_byte_never_panics() {
        let bytes = sample().build();
        for at in 0..bytes.len() {
            for v in [0x00, 0xff, 0x7f, 0x80, 0x09] {
                let mut b = bytes.clone();
                b[at] = v;
                if let Ok(f) = GgufFile::parse(&b) {
                    for t in f.tensors() {
                        let _ = dequantize(t, &mut Vec::new());
                    }
                    for (_, v) in f.metadata_entries() {
                        if let Some(a) = v.as_array() {
                            let _ = a.iter().count();
                        }
                    }
                }
            }
        }
    }

    fn header(tensors: u64, kvs: u64) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(tensors.to_le_bytes());
        out.extend(kvs.to_le_bytes());
        out
    }

    #[test]
    fn hostile_headers() {
        let mut b = header(0, 0);
        b[0] = b'X';
        assert_eq!(GgufFile::parse(&b).unwrap_err(), GgufError::BadMagic);
        let mut b = header(0, 0);
        b[4] = 1;
        assert_eq!(
            GgufFile::parse(&b).unwrap_err(),
            GgufError::UnsupportedVersion(1)
        );
        // Big-endian v3 reads as a huge version.
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            GgufFile::parse(&b),
            Err(GgufError::UnsupportedVersion(_))
        ));
        for (t, k) in [(0, u64::MAX), (u64::MAX, 0), (1 << 60, 0), (0, 1 << 60)] {
            assert!(matches!(
                GgufFile::parse(&header(t, k)),
                Err(GgufError::CountTooLarge { .. })
            ));
        }
    }

    fn one_kv(key: &str, ty: u32, value: &[u8]) -> Vec<u8> {
        let mut b = header(0, 1);
        put_str(&mut b, key);
        b.extend(ty.to_le_bytes());
        b.extend(value);
        b
    }

    #[test]
    fn hostile_metadata() {
        // An array claiming 2^60 strings.
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((1u64 << 60).to_le_bytes());
        v.extend([0; 64]);
        assert!(matches!(
            GgufFile::parse(&one_kv("k", 9, &v)),
            Err(GgufError::CountTooLarge { .. })
        ));
        // An array of u64 whose byte size overflows.
        let mut v = 10u32.to_le_bytes().to_vec();
        v.extend((u64::MAX / 4).to_le_bytes());
        assert!(matches!(
            GgufFile::parse(&one_kv("k", 9, &v)),
            Err(GgufError::CountTooLarge { .. })
        ));
        // A string running past the end, and one of length 2^64 - 1.
        for len in [100u64, u64::MAX] {
            let mut v = len.to_le_bytes().to_vec();
            v.extend(b"abc");
            assert!(matches!(
                GgufFile::parse(&one_kv("k", 8, &v)),
                Err(GgufError::Truncated { .. })
            ));
        }
        // A key of absurd length.
        let mut b = header(0, 1);
        b.extend(u64::MAX.to_le_bytes());
        b.extend([0; 16]);
        assert!(matches!(
            GgufFile::parse(&b),
            Err(GgufError::Truncated { .. })
        ));
        assert_eq!(
            GgufFile::parse(&one_kv("k", 13, &[0; 8])).unwrap_err(),
            GgufError::UnknownValueType(13)
        );
        let mut v = 77u32.to_le_bytes().to_vec();
        v.extend(0u64.to_le_bytes());
        assert_eq!(
            GgufFile::parse(&one_kv("k", 9, &v)).unwrap_err(),
            GgufError::UnknownValueType(77)
        );
        assert_eq!(
            GgufFile::parse(&one_kv("\u{7f}\u{80}", 0, &[1])).map(|_| ()),
            Ok(())
        );
        let mut b = header(0, 1);
        b.extend(2u64.to_le_bytes());
        b.extend([0xc3, 0x28, 0, 0, 0, 0, 1]);
        assert_eq!(GgufFile::parse(&b).unwrap_err(), GgufError::InvalidUtf8(24));
        // Arrays nested past the limit.
        let mut v = Vec::new();
        for _ in 0..MAX_ARRAY_DEPTH + 4 {
            v.extend(9u32.to_le_bytes());
            v.extend(1u64.to_le_bytes());
        }
        v.extend(0u32.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        assert_eq!(
            GgufFile::parse(&one_kv("k", 9, &v)).unwrap_err(),
            GgufError::NestingTooDeep
        );
        let dup = Writer::new().kv("k", V::U8(1)).kv("k", V::U8(2)).build();
        assert_eq!(
            GgufFile::parse(&dup).unwrap_err(),
            GgufError::DuplicateKey("k".into())
        );
        for bad in [V::U32(0), V::U32(48), V::Str("32"), V::I32(-32)] {
            let b = Writer::new().kv("general.alignment", bad).build();
            assert_eq!(GgufFile::parse(&b).unwrap_err(), GgufError::BadAlignment);
        }
    }

    #[test]
    fn hostile_tensors() {
        let parse = |w: Writer| GgufFile::parse(&w.build()).map(|_| ());
        let t =
            |dims: &[u64], ty: u32, len: usize| Writer::new().tensor("t", dims, ty, vec![0; len]);
        assert_eq!(parse(t(&[4], 0, 16)), Ok(()));
        assert!(matches!(
            parse(t(&[4], 0, 12)),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        assert!(matches!(
            parse(t(&[1 << 32, 1 << 32], 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            parse(t(&[1 << 62, 2], 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            parse(t(&[1 << 62, 1], 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            parse(t(&[1 << 40], 0, 16)),
            Err(GgufError::TensorOutOfBounds { .. })
        ));
        // Q4_0 rows must be whole blocks.
        assert!(matches!(
            parse(t(&[16, 2], 2, 18)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            parse(t(&[4], 4, 16)),
            Err(GgufError::UnknownGgmlType { code: 4, .. })
        ));
        assert!(matches!(
            parse(t(&[4], 1000, 16)),
            Err(GgufError::UnknownGgmlType { code: 1000, .. })
        ));
        assert!(matches!(
            parse(t(&[1, 1, 1, 1, 1], 0, 4)),
            Err(GgufError::TooManyDims { n_dims: 5, .. })
        ));
        let dup = t(&[4], 0, 16).tensor("t", &[4], 0, vec![0; 16]);
        assert_eq!(parse(dup), Err(GgufError::DuplicateTensor("t".into())));

        // Offsets that are misaligned or past the end.
        let base = t(&[4], 0, 16).build();
        // Header (24), name (8 + 1), n_dims (4), one dim (8), type (4), then the offset.
        let offset_at = 24 + 9 + 4 + 8 + 4;
        for (offset, misaligned) in [(4u64, true), (32, false), (u64::MAX - 31, false)] {
            let mut b = base.clone();
            b[offset_at..offset_at + 8].copy_from_slice(&offset.to_le_bytes());
            let e = GgufFile::parse(&b).unwrap_err();
            if misaligned {
                assert!(matches!(e, GgufError::MisalignedTensor { .. }), "{e}");
            } else {
                assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
            }
        }

        // Every type's byte length is validated: one block fits, one byte less does not.
        for code in 0..64 {
            let Some(ty) = GgmlType::from_code(code) else {
                continue;
            };
            assert_eq!(ty.code(), code);
            let (n, size) = (ty.block_size(), ty.type_size() as usize);
            assert_eq!(parse(t(&[n], code, size)), Ok(()), "{ty:?}");
            assert!(parse(t(&[n], code, size - 1)).is_err(), "{ty:?}");
        }
    }

    #[test]
    fn block_sizes_match_ggml() {
        use GgmlType::*;
        for (ty, block, bytes) in [
            (F32, 1, 4),
            (F16, 1, 2),
            (BF16, 1, 2),
            (Q4_0, 32, 18),
            (Q4_1, 32, 20),
            (Q5_0, 32, 22),
            (Q5_1, 32, 24),
            (Q8_0, 32, 34),
            (Q8_1, 32, 36),
            (Q2_K, 256, 84),
            (Q3_K, 256, 110),
            (Q4_K, 256, 144),
            (Q5_K, 256, 176),
            (Q6_K, 256, 210),
        ] {
            assert_eq!((ty.block_size(), ty.type_size()), (block, bytes), "{ty:?}");
        }
        assert_eq!(Q4_K.byte_size(512), Some(288));
        assert_eq!(Q4_K.byte_size(100), None);
    }

    fn dequant(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        dequantize_into(ty, data, &mut out).unwrap();
        out
    }

    #[test]
    fn dequant_q8_0() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        b.extend(f16_bytes(-2.0));
        b.extend((0..32).map(|i| if i == 0 { 0x80 } else { 127 }));
        let y = dequant(GgmlType::Q8_0, &b, 64);
        assert_eq!(&y[..3], [-8.0, -7.5, -7.0]);
        assert_eq!(y[31], 7.5);
        assert_eq!((y[32], y[33]), (256.0, -254.0));
    }

    #[test]
    fn dequant_q4_0() {
        let mut b = f16_bytes(0.25).to_vec();
        b.extend((0..16).map(|i| (i as u8) | ((15 - i as u8) << 4)));
        let y = dequant(GgmlType::Q4_0, &b, 32);
        // Low nibble j -> element j, high nibble -> element j + 16; x = (q - 8) * d.
        assert_eq!((y[0], y[1], y[8], y[15]), (-2.0, -1.75, 0.0, 1.75));
        assert_eq!((y[16], y[23], y[31]), (1.75, 0.0, -2.0));
    }

    #[test]
    fn dequant_q4_1() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend((0..16).map(|i| (i as u8) | (3 << 4)));
        let y = dequant(GgmlType::Q4_1, &b, 32);
        // x = q * d + m.
        assert_eq!((y[0], y[1], y[15]), (-1.0, -0.5, 6.5));
        assert!(y[16..].iter().all(|&v| v == 0.5));
    }

    #[test]
    fn dequant_floats() {
        let b: Vec<u8> = [1.5f32, -0.0, f32::INFINITY]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let y = dequant(GgmlType::BF16, &b, 3);
        assert_eq!(y[0], 1.5);
        assert!(y[1] == 0.0 && y[1].is_sign_negative() && y[2].is_infinite());
        let b: Vec<u8> = [65504.0f32, 6e-8]
            .iter()
            .flat_map(|v| f16_bytes(*v))
            .collect();
        assert_eq!(dequant(GgmlType::F16, &b, 2)[0], 65504.0);
    }

    #[test]
    fn dequant_rejects_bad_requests() {
        let mut out = vec![0.0; 32];
        assert_eq!(
            dequantize_into(GgmlType::Q5_0, &[0; 22], &mut out),
            Err(GgufError::Unsupported(GgmlType::Q5_0))
        );
        assert!(matches!(
            dequantize_into(GgmlType::Q4_0, &[0; 17], &mut out),
            Err(GgufError::LengthMismatch { .. })
        ));
        let t = TensorInfo {
            name: "t",
            dims: vec![u64::MAX, u64::MAX],
            ggml_type: GgmlType::F32,
            offset: 0,
            data: &[0; 8],
        };
        assert!(matches!(
            dequantize(&t, &mut Vec::new()),
            Err(GgufError::LengthMismatch { .. })
        ));
    }

    /// The test-block generator shared with the Python script that made the references
    /// (xorshift32, top byte).
    fn xorshift_bytes(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Checks `y` against references from `gguf.quants.dequantize` (gguf-py): selected
    /// values as f32 bits, and the sequential f64 sums of `y[i]` and `i * y[i]`.
    fn check_reference(y: &[f32], bits: &[(usize, u32)], sum: f64, weighted: f64) {
        for &(i, b) in bits {
            assert_eq!(y[i].to_bits(), b, "element {i}: {}", y[i]);
        }
        let s: f64 = y.iter().map(|&v| f64::from(v)).sum();
        let w: f64 = y
            .iter()
            .enumerate()
            .map(|(i, &v)| i as f64 * f64::from(v))
            .sum();
        assert_eq!(s.to_bits(), sum.to_bits(), "sum {s} vs {sum}");
        assert_eq!(
            w.to_bits(),
            weighted.to_bits(),
            "weighted sum {w} vs {weighted}"
        );
    }

    // Python used to produce the references below (gguf 0.x, numpy):
    //   b = xs_bytes(seed, n)  # the same xorshift32 as `xorshift_bytes`
    //   (set the f16 fields as in the tests)
    //   v = gguf.quants.dequantize(np.frombuffer(bytes(b), np.uint8), T.Q4_K)
    //   s = w = 0.0; for i, x in enumerate(v.tolist()): s += x; w += i * x

    #[test]
    fn dequant_q4_k_matches_gguf_py() {
        let mut b = xorshift_bytes(0x1234_5678, 288);
        b[0..2].copy_from_slice(&f16_bytes(0.0123));
        b[2..4].copy_from_slice(&f16_bytes(0.0045));
        b[144..146].copy_from_slice(&f16_bytes(-0.5));
        b[146..148].copy_from_slice(&f16_bytes(0.25));
        let y = dequant(GgmlType::Q4_K, &b, 512);
        check_reference(
            &y,
            &[
                (0, 0x40f2d760),
                (1, 0x4102ddb0),
                (17, 0x40cd0f60),
                (31, 0x40946360),
                (32, 0x40b94640),
                (63, 0x3f3f5600),
                (64, 0x3f337100),
                (100, 0x3d75a000),
                (127, 0xbac80000),
                (128, 0x409132e0),
                (200, 0x40dda800),
                (255, 0x4107e7b0),
                (256, 0xc2580000),
                (300, 0xc35f0000),
                (400, 0xc33e0000),
                (511, 0xc29d8000),
            ],
            -32335.102416992188,
            -13072707.486480713,
        );
    }

    #[test]
    fn dequant_q6_k_matches_gguf_py() {
        let mut b = xorshift_bytes(0x0bad_f00d, 420);
        b[208..210].copy_from_slice(&f16_bytes(0.0271));
        b[418..420].copy_from_slice(&f16_bytes(-1.75));
        let y = dequant(GgmlType::Q6_K, &b, 512);
        check_reference(
            &y,
            &[
                (0, 0x4179c000),
                (1, 0x41338200),
                (17, 0x42606280),
                (31, 0x41ea2400),
                (32, 0xc197c200),
                (63, 0x3f98a000),
                (64, 0x419c1800),
                (100, 0xc22bb400),
                (127, 0xc2c0bb80),
                (128, 0x40d02000),
                (200, 0x41a06e00),
                (255, 0xc22da780),
                (256, 0x45295000),
                (300, 0xc46ee000),
                (400, 0xc4360000),
                (511, 0xc58b5800),
            ],
            10357.6484375,
            2260272.4272460938,
        );
    }

    /// Reads the real SmolLM2-135M-Instruct Q4_1 GGUF when `GLINT_TEST_GGUF` names it;
    /// skipped otherwise. Expected values come from gguf-py.
    #[test]
    fn real_smollm2_file() {
        let Some(path) = std::env::var_os("GLINT_TEST_GGUF") else {
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        let f = GgufFile::parse(&bytes).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.tensors().len(), 272);
        assert_eq!(f.data_offset(), 1785664);
        assert_eq!(f.get_str("general.architecture"), Some("llama"));
        assert_eq!(f.get_u32("llama.block_count"), Some(30));
        assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id"), Some(2));
        assert_eq!(f.get_f32("llama.rope.freq_base"), Some(100000.0));
        let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.len(), 49152);
        assert_eq!(
            &tokens[..3],
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        );
        assert_eq!(tokens[49151], "ectable");
        let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
        assert_eq!(merges.len(), 48900);
        assert_eq!(merges[0], "Ġ t");
        assert_eq!(
            f.get_i32_array("tokenizer.ggml.token_type")
                .map(|t| t.len()),
            Some(49152)
        );

        let emb = f.tensor("token_embd.weight").unwrap();
        assert_eq!(emb.ggml_type, GgmlType::Q8_0);
        assert_eq!(emb.dims, [576, 49152]);
        assert_eq!(emb.offset, 0);
        let mut y = Vec::new();
        dequantize(emb, &mut y).unwrap();
        assert_eq!(y.len(), 576 * 49152);
        let bits: Vec<u32> = y[..4].iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, [0xbdda3400, 0x3d071400, 0x3d456c00, 0xbcbb0800]);
        assert_eq!(y[y.len() - 1].to_bits(), 0xbd2ad000);
        let s: f64 = y.iter().map(|&v| f64::from(v)).sum();
        assert_eq!(s, -15353.04449415207);

        let q = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(
            (q.ggml_type, q.dims.as_slice()),
            (GgmlType::Q4_1, &[576, 576][..])
        );
        dequantize(q, &mut y).unwrap();
        let bits: Vec<u32> = y[..4].iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, [0xbdc54000, 0x3e212000, 0xbdc54000, 0xbf3b0000]);
        assert_eq!(y[y.len() - 1].to_bits(), 0xbe830000);
        let s: f64 = y.iter().map(|&v| f64::from(v)).sum();
        assert_eq!(s, 59.22322082519531);

        let norm = f.tensor("blk.0.attn_norm.weight").unwrap();
        assert_eq!(
            (norm.ggml_type, norm.dims.as_slice()),
            (GgmlType::F32, &[576][..])
        );
        dequantize(norm, &mut y).unwrap();
        assert_eq!(y[0].to_bits(), 0x3c650000);
        let s: f64 = y.iter().map(|&v| f64::from(v)).sum();
        assert_eq!(s, 0.6129436492919922);
    }
}
