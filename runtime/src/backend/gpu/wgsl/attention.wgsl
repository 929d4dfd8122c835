// Causal grouped-query attention of query i (position pos0 + i) and head h over the
// cached positions 0..=pos0 + i: one workgroup per (head, query). Scores go to the
// scratch's `scores` rows; softmax in f32 with the row's maximum subtracted. The cache
// holds f32 bits, two f16 or four int8 per word; an int8 element is dequantized as the
// CPU's `KvRows::at` does, times its 32-element block's f32 scale (from word `scales`).

struct Params {
    pos0: u32,
    q_dim: u32,
    kv_dim: u32,
    head_dim: u32,
    group: u32,
    n_heads: u32,
    capacity: u32,
    // Element offset of the layer in the caches.
    layer: u32,
    // 0: f32, 1: f16, 2: int8.
    kv: u32,
    scale: f32,
    // int8: word offset of the block scales in each cache buffer.
    scales: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<u32>;
@group(0) @binding(3) var<storage, read> vc: array<u32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> att: array<f32>;

var<workgroup> part: array<f32, 64>;

fn cached(c: u32, e: u32) -> f32 {
    if p.kv == 2u {
        var word: u32;
        var d: u32;
        if c == 0u {
            word = kc[e / 4u];
            d = kc[p.scales + e / 32u];
        } else {
            word = vc[e / 4u];
            d = vc[p.scales + e / 32u];
        }
        return f32(extractBits(i32(word), 8u * (e % 4u), 8u)) * bitcast<f32>(d);
    }
    if p.kv == 1u {
        var word: u32;
        if c == 0u {
            word = kc[e / 2u];
        } else {
            word = vc[e / 2u];
        }
        return unpack2x16float(word)[e % 2u];
    }
    if c == 0u {
        return bitcast<f32>(kc[e]);
    }
    return bitcast<f32>(vc[e]);
}

fn reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    part[lid] = v;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            if is_max {
                part[lid] = max(part[lid], part[lid + k]);
            } else {
                part[lid] += part[lid + k];
            }
        }
        workgroupBarrier();
    }
    let r = part[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let h = wid.x;
    let i = wid.y;
    let len = p.pos0 + i + 1u;
    let kvh = h / p.group;
    let qb = i * p.q_dim + h * p.head_dim;
    let sb = (i * p.n_heads + h) * p.capacity;
    let cb = p.layer + kvh * p.head_dim;
    var mx = -3.402823e38;
    for (var t = lid; t < len; t += 64u) {
        var s = 0.0;
        let kb = cb + t * p.kv_dim;
        for (var d = 0u; d < p.head_dim; d++) {
            s += q[qb + d] * cached(0u, kb + d);
        }
        s *= p.scale;
        scores[sb + t] = s;
        mx = max(mx, s);
    }
    mx = reduce(lid, mx, true);
    var sum = 0.0;
    for (var t = lid; t < len; t += 64u) {
        let e = exp(scores[sb + t] - mx);
        scores[sb + t] = e;
        sum += e;
    }
    sum = reduce(lid, sum, false);
    storageBarrier();
    let inv = 1.0 / sum;
    for (var d = lid; d < p.head_dim; d += 64u) {
        var o = 0.0;
        for (var t = 0u; t < len; t++) {
            o += scores[sb + t] * cached(1u, cb + t * p.kv_dim + d);
        }
        att[qb + d] = o * inv;
    }
}
