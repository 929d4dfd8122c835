// out[j] = input[row0 + j] / sqrt(mean(input^2) + eps) * weight: one workgroup per row.

struct Params {
    d: u32,
    row0: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> inp: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = wid.x;
    let base = (p.row0 + j) * p.d;
    var s = 0.0;
    for (var c = lid.x; c < p.d; c += 64u) {
        let v = inp[base + c];
        s += v * v;
    }
    part[lid.x] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid.x < k {
            part[lid.x] += part[lid.x + k];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(part[0] / f32(p.d) + p.eps);
    for (var c = lid.x; c < p.d; c += 64u) {
        out[j * p.d + c] = inp[base + c] * scale * weight[c];
    }
}
