// What matvec.wgsl (f32 activations), matvec_int8.wgsl (int8 activations) and matmul.wgsl
// (f32, tiled for batches) share: their parameters, bindings, which part a workgroup
// computes and how a result reaches y. Prefixed to each (kernels.rs).

struct Params {
    // n, x_stride (the matrices' columns), mode, scale (f32 bits: 1, or a deliberate
    // error for the self-test's tests).
    head: vec4<u32>,
    // Part m: [3m] rows, out_row0, out_stride, first_group (u32 max: no such part);
    // [3m + 1] dtype, cols, group, scales; [3m + 2].x mins.
    parts: array<vec4<u32>, 9>,
    // With a norm: x the first input row, y eps (f32 bits).
    norm: vec4<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w0: array<u32>;
@group(0) @binding(2) var<storage, read> w1: array<u32>;
@group(0) @binding(3) var<storage, read> w2: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y0: array<f32>;
@group(0) @binding(6) var<storage, read_write> y1: array<f32>;
@group(0) @binding(7) var<storage, read_write> y2: array<f32>;
// The norm's weights (any buffer when not normalising).
@group(0) @binding(8) var<storage, read> g: array<f32>;

const TOK: u32 = 4u;
const MODE_ADD: u32 = 1u;
const MODE_SWIGLU: u32 = 2u;

// The part workgroup `wgx` computes rows of: parts' workgroups start at their first_group.
fn part_index(wgx: u32) -> u32 {
    var m = 0u;
    if wgx >= p.parts[3u].w {
        m = 1u;
    }
    if wgx >= p.parts[6u].w {
        m = 2u;
    }
    return m;
}

// y_m[i] = v, or += v.
fn put(m: u32, i: u32, v: f32, add: bool) {
    switch m {
        case 0u: {
            if add {
                y0[i] += v;
            } else {
                y0[i] = v;
            }
        }
        case 1u: {
            if add {
                y1[i] += v;
            } else {
                y1[i] = v;
            }
        }
        default: {
            if add {
                y2[i] += v;
            } else {
                y2[i] = v;
            }
        }
    }
}

// Output element i of part m: `v` (and, for SwiGLU, the up row's `u`) as the mode says.
fn put_result(m: u32, i: u32, v: f32, u: f32) {
    let mode = p.head.z;
    let scale = bitcast<f32>(p.head.w);
    if mode == MODE_SWIGLU {
        let g = v * scale;
        put(0u, i, g / (1.0 + exp(-g)) * (u * scale), false);
    } else {
        put(m, i, v * scale, mode == MODE_ADD);
    }
}

// Row r of part m (`part`: p.parts[3m]) for tokens t0 .. t0 + nt: `acc` (and, for SwiGLU,
// the up rows `up`) as the mode says.
fn store(m: u32, part: vec4<u32>, r: u32, t0: u32, nt: u32, acc: array<f32, TOK>, up: array<f32, TOK>) {
    for (var t = 0u; t < nt; t++) {
        put_result(m, (t0 + t) * part.z + part.y + r, acc[t], up[t]);
    }
}
