// y[t][row0 + r] = sum_c W[r][c] * x[t][c] for the rows of one weight chunk and `n`
// tokens: one thread per output row and tile of TOK tokens (each dequantized block is
// used for TOK tokens), f32 accumulation. No shared memory and no barriers.

struct Params {
    rows: u32,
    n: u32,
    x_stride: u32,
    out_stride: u32,
    out_row0: u32,
    dtype: u32,
    cols: u32,
    group: u32,
    scales: u32,
    mins: u32,
    // 1, or a deliberate error for the self-test's tests.
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const TOK: u32 = 4u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if r >= p.rows {
        return;
    }
    let wv = WeightView(p.dtype, p.cols, p.group, p.scales, p.mins);
    let t0 = gid.y * TOK;
    let nt = min(TOK, p.n - t0);
    var acc = array<f32, TOK>(0.0, 0.0, 0.0, 0.0);
    var blk: array<f32, 32>;
    let nb = (p.cols + 31u) / 32u;
    for (var b = 0u; b < nb; b++) {
        let len = min(32u, p.cols - 32u * b);
        load_block(wv, r * p.cols + 32u * b, len, &blk);
        for (var t = 0u; t < nt; t++) {
            let xb = (t0 + t) * p.x_stride + 32u * b;
            var s = 0.0;
            for (var j = 0u; j < len; j++) {
                s += blk[j] * x[xb + j];
            }
            acc[t] += s;
        }
    }
    for (var t = 0u; t < nt; t++) {
        y[(t0 + t) * p.out_stride + p.out_row0 + r] = acc[t] * p.scale;
    }
}
