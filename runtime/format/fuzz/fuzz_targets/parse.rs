//! Fuzzes `GlintFile::parse`: any input must parse or fail with a `FormatError`, and a
//! file that parses must be usable in full (every tensor's matrix, every row decoded,
//! the integrity check) without a panic.
#![no_main]

use glint_format::GlintFile;
use glint_format::quant::dequantize_row;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GlintFile::parse(data) else {
        return;
    };
    let tok = f.tokenizer();
    let _ = tok.tokens.iter().map(str::len).sum::<usize>();
    let _ = tok.merges.iter().map(str::len).sum::<usize>();
    let _ = f.provenance().count();
    for t in f.tensors() {
        let m = t.matrix().expect("a parsed tensor is a matrix");
        let mut row = vec![0f32; m.cols];
        for r in 0..m.rows {
            dequantize_row(&m, r, &mut row);
        }
    }
    let _ = f.verify();
});
