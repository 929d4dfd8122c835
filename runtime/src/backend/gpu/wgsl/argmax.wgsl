// out[0] = the index of the largest of x[off .. off + len] (the first on ties, as the
// CPU's `sampler::argmax`), or 0xffffffff when one is NaN or infinite: one workgroup.
// Non-finite values are found by their exponent bits (a compiler may assume `v != v`
// is false).

struct Params {
    len: u32,
    off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, 64>;
var<workgroup> best_i: array<u32, 64>;
var<workgroup> non_finite: atomic<u32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    if lid == 0u {
        atomicStore(&non_finite, 0u);
    }
    workgroupBarrier();
    var bv = -3.402823e38;
    var bi = 0xffffffffu;
    var bad = 0u;
    for (var i = lid; i < p.len; i += 64u) {
        let v = x[p.off + i];
        bad |= u32((bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u);
        if v > bv || bi == 0xffffffffu {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    if bad != 0u {
        atomicOr(&non_finite, 1u);
    }
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
        let found = select(best_i[0], 0u, best_i[0] == 0xffffffffu);
        out[0] = select(found, 0xffffffffu, atomicLoad(&non_finite) != 0u);
    }
}
