// out[0] = the index of the largest of x[off .. off + len] (the first on ties, as the
// CPU's `sampler::argmax`): one workgroup.

struct Params {
    len: u32,
    off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, 64>;
var<workgroup> best_i: array<u32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var bv = -3.402823e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.len; i += 64u) {
        let v = x[p.off + i];
        if v > bv || bi == 0xffffffffu {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            let ov = best_v[lid + k];
            let oi = best_i[lid + k];
            if oi != 0xffffffffu && (best_i[lid] == 0xffffffffu || ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[0] = select(best_i[0], 0u, best_i[0] == 0xffffffffu);
    }
}
