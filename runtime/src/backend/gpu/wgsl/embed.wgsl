// x[i][c] = table[tokens[i]][c] for the tokens whose rows are in this chunk of the
// table: one thread per element.

struct Params {
    n: u32,
    tok_off: u32,
    dtype: u32,
    cols: u32,
    group: u32,
    scales: u32,
    mins: u32,
    // The table's rows in this buffer: row0 .. row0 + rows (a split table).
    row0: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

fn word(i: u32) -> u32 {
    return w[i];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    if e >= p.n * p.cols {
        return;
    }
    let i = e / p.cols;
    let c = e % p.cols;
    let wv = WeightView(p.dtype, p.cols, p.group, p.scales, p.mins);
    let t = data[p.tok_off + i];
    if t < p.row0 || t >= p.row0 + p.rows {
        return;
    }
    x[e] = weight_elem(wv, (t - p.row0) * p.cols + c);
}
