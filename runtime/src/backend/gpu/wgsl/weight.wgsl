// Reading a `.glint` weight matrix as packed u32 words straight from the file's planes
// (docs/FORMAT.md §8): values at word 0 of the buffer, f16 scales from word `wv.scales`,
// f16 minimums (q4g32a) from word `wv.mins`. Prefixed to matvec.wgsl and embed.wgsl. The
// functions after the PER MATRIX line read word `i` of a matrix with `word#(i)`: embed.wgsl
// binds one matrix (`#` is removed, it defines `word`); matvec.wgsl binds three and gets
// these functions once per matrix (`#` = 0, 1, 2; see kernels.rs).

// glint_format::DType codes.
const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_Q4A: u32 = 2u;
const DT_Q8: u32 = 6u;

struct WeightView {
    dtype: u32,
    cols: u32,
    // Elements per scale (32, 64 or 128; 1 for float types).
    group: u32,
    // Word offsets of the scales and mins planes.
    scales: u32,
    mins: u32,
}

// PER MATRIX
// f16 number `idx` of the plane starting at word `base`.
fn half_at#(base: u32, idx: u32) -> f32 {
    return unpack2x16float(word#(base + idx / 2u))[idx % 2u];
}

// Element `i` (row-major) of the matrix, dequantized to f32.
fn weight_elem#(wv: WeightView, i: u32) -> f32 {
    switch wv.dtype {
        case 0u: {
            return bitcast<f32>(word#(i));
        }
        case 1u: {
            return half_at#(0u, i);
        }
        case 6u: {
            let q = extractBits(i32(word#(i / 4u)), 8u * (i % 4u), 8u);
            return half_at#(wv.scales, i / 32u) * f32(q);
        }
        default: {
            // int4: block b's 16 bytes; byte k%16 holds element k (k < 16) in its low
            // nibble and element k + 16 in its high nibble.
            let b = i / 32u;
            let k = i % 32u;
            let byte_idx = 16u * b + (k % 16u);
            let byte = (word#(byte_idx / 4u) >> (8u * (byte_idx % 4u))) & 0xffu;
            let q = select(byte & 0xfu, byte >> 4u, k >= 16u);
            let d = half_at#(wv.scales, i / wv.group);
            if wv.dtype == DT_Q4A {
                return d * f32(q) + half_at#(wv.mins, b);
            }
            return d * (f32(q) - 8.0);
        }
    }
}

// Elements `i0 .. i0 + len` (len <= 32; a whole block for the int4 types) into `out`.
fn load_block#(wv: WeightView, i0: u32, len: u32, out: ptr<function, array<f32, 32>>) {
    if wv.dtype >= DT_Q4A && wv.dtype < DT_Q8 {
        let b = i0 / 32u;
        let d = half_at#(wv.scales, i0 / wv.group);
        var m = -8.0 * d;
        if wv.dtype == DT_Q4A {
            m = half_at#(wv.mins, b);
        }
        for (var j = 0u; j < 4u; j++) {
            let packed = word#(4u * b + j);
            for (var k = 0u; k < 4u; k++) {
                let byte = (packed >> (8u * k)) & 0xffu;
                (*out)[4u * j + k] = d * f32(byte & 0xfu) + m;
                (*out)[4u * j + k + 16u] = d * f32(byte >> 4u) + m;
            }
        }
        return;
    }
    for (var j = 0u; j < len; j++) {
        (*out)[j] = weight_elem#(wv, i0 + j);
    }
}
