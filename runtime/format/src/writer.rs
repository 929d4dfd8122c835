//! Writing `.glint` files (hosted only): the quantizer's single way to produce one.

use crate::config::{CONFIG_LEN_1_1, ModelConfig};
use crate::file::{
    DATA_ALIGN, HEADER_LEN, MAGIC, MAX_DIMS, SECTIONS, Section, VERSION_MAJOR, VERSION_MINOR,
};
use crate::strlist::write_strlist;
use crate::tokenizer::TokenizerSpec;
use crate::{DType, TENSOR_ALIGN};
use sha2::{Digest, Sha256};
use std::format;
use std::io::{self, Write};
use std::prelude::v1::*;

/// One tensor to write: its bytes already laid out as planes (see [`crate::quant`]).
#[derive(Clone, Debug)]
pub struct TensorOut {
    /// Canonical name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Bytes of all planes, `dtype.plane_layout(elements).total` long.
    pub bytes: Vec<u8>,
}

/// Everything in a file but the tensors.
#[derive(Clone, Debug)]
pub struct FileMeta {
    /// Model config.
    pub config: ModelConfig,
    /// Tokenizer.
    pub tokenizer: TokenizerSpec,
    /// The model's chat template (Jinja), empty for none.
    pub chat_template: String,
    /// Provenance `(key, value)` pairs.
    pub provenance: Vec<(String, String)>,
}

/// Passes bytes through to `inner`, hashing them and counting the position.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    pos: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.hash.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, at: u64) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < at {
            let n = (at - self.pos).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Writes a complete `.glint` file to `out` and returns its length in bytes.
///
/// Tensors are written in the order given; each starts on a [`TENSOR_ALIGN`] boundary.
pub fn write_glint<W: Write>(out: W, meta: &FileMeta, tensors: &[TensorOut]) -> io::Result<u64> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    for t in tensors {
        let elements: u64 = t.shape.iter().product();
        if t.shape.is_empty()
            || t.shape.len() > MAX_DIMS
            || t.dtype.plane_layout(elements).total != t.bytes.len() as u64
        {
            return Err(invalid(format!(
                "tensor {}: bytes disagree with dtype {} and shape {:?}",
                t.name,
                t.dtype.name(),
                t.shape
            )));
        }
    }
    let mut config = Vec::with_capacity(CONFIG_LEN_1_1);
    meta.config.write(&mut config);
    let mut tokenizer = Vec::new();
    meta.tokenizer.write(&mut tokenizer);
    let mut template = meta.chat_template.as_bytes().to_vec();
    template.resize(template.len().next_multiple_of(4), 0);
    let mut provenance = Vec::new();
    let flat: Vec<&str> = meta
        .provenance
        .iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    write_strlist(&mut provenance, &flat);

    // The table needs the data offsets, and the data offset needs the table's size.
    let table_len = 8 + tensors.len() * 64 + {
        let mut names = Vec::new();
        write_strlist(
            &mut names,
            &tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        );
        names.len()
    };
    let mut at = HEADER_LEN as u64;
    let mut place = |len: usize| {
        let off = at;
        at += len as u64;
        (off, len as u64)
    };
    let config_s = place(config.len());
    let tokenizer_s = place(tokenizer.len());
    let template_s = (place(template.len()).0, meta.chat_template.len() as u64);
    let provenance_s = place(provenance.len());
    let table_s = place(table_len);
    let data_off = at.next_multiple_of(DATA_ALIGN);
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut end = data_off;
    for t in tensors {
        let off = end.next_multiple_of(TENSOR_ALIGN);
        offsets.push(off);
        end = off + t.bytes.len() as u64;
    }
    let data_s = (data_off, end - data_off);
    let integ_s = (end.next_multiple_of(4), 32);
    let file_len = integ_s.0 + 32;

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    for (t, &off) in tensors.iter().zip(&offsets) {
        table.extend_from_slice(&(t.dtype as u32).to_le_bytes());
        table.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for i in 0..MAX_DIMS {
            table.extend_from_slice(&t.shape.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        table.extend_from_slice(&off.to_le_bytes());
        table.extend_from_slice(&(t.bytes.len() as u64).to_le_bytes());
        table.extend_from_slice(&crc32fast::hash(&t.bytes).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
    }
    write_strlist(
        &mut table,
        &tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
    );
    debug_assert_eq!(table.len(), table_len);

    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    header.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    header.extend_from_slice(&HEADER_LEN.to_le_bytes());
    header.extend_from_slice(&file_len.to_le_bytes());
    let mut dir = [(0u64, 0u64); SECTIONS];
    dir[Section::Config as usize] = config_s;
    dir[Section::Tokenizer as usize] = tokenizer_s;
    dir[Section::ChatTemplate as usize] = template_s;
    dir[Section::Provenance as usize] = provenance_s;
    dir[Section::Tensors as usize] = table_s;
    dir[Section::Data as usize] = data_s;
    dir[Section::Integrity as usize] = integ_s;
    for (off, len) in dir {
        header.extend_from_slice(&off.to_le_bytes());
        header.extend_from_slice(&len.to_le_bytes());
    }
    header.extend_from_slice(&[0u8; 8]);
    debug_assert_eq!(header.len(), HEADER_LEN as usize);

    let mut w = HashingWriter {
        inner: out,
        hash: Sha256::new(),
        pos: 0,
    };
    for part in [&header, &config, &tokenizer, &template, &provenance, &table] {
        w.put(part)?;
    }
    for (t, &off) in tensors.iter().zip(&offsets) {
        w.pad_to(off)?;
        w.put(&t.bytes)?;
    }
    w.pad_to(integ_s.0)?;
    let digest = w.hash.clone().finalize();
    w.inner.write_all(&digest)?;
    w.inner.flush()?;
    Ok(file_len)
}
