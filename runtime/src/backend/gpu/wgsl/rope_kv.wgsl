// RoPE and the KV append in one kernel: one workgroup per (head, token). Heads are
// numbered Q heads, then K heads, then V heads; a dispatch covers heads h_first .. +
// wg.x. `rotate`: Q and K heads are rotated in place by their positions' angles (`data`
// holds per position `head_dim / 2` cosines then as many sines); `store`: K and V heads
// go to the caches at element `dst` (f32 as its bits; f16 rounded to nearest-even,
// bit-identical to the CPU's `half::f16::from_f32`, two per word; int8 per 32-element
// block with an f32 scale, the CPU's `store_q8` (llama.cpp's q8_0 rule) step for step,
// four per word, the scales from word `scales`). Backend::rope is rotate only (Q and K
// heads), Backend::append_kv store only (K and V heads), the fused Backend::rope_append_kv
// both.

struct Params {
    q_dim: u32,
    kv_dim: u32,
    head_dim: u32,
    // 0: interleaved pairs (2k, 2k + 1); 1: NeoX pairs (k, k + head_dim / 2).
    neox: u32,
    angles_off: u32,
    h_first: u32,
    rotate: u32,
    store: u32,
    dst: u32,
    // 0: f32, 1: f16, 2: int8.
    kv: u32,
    // int8: word offset of the block scales in each cache buffer.
    scales: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<u32>;
@group(0) @binding(6) var<storage, read_write> vc: array<u32>;

const KV_F16: u32 = 1u;
const KV_I8: u32 = 2u;

// The head being rotated (head_dim <= 256, checked when the scratch is made).
var<workgroup> head: array<f32, 256>;
// int8: the head's values to store, quantized a block at a time.
var<workgroup> stored: array<f32, 256>;

// IEEE binary16 bits of `x`, rounded to nearest, ties to even.
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sgn = (b >> 16u) & 0x8000u;
    let e = i32((b >> 23u) & 0xffu);
    let m = b & 0x7fffffu;
    if e == 255 {
        return sgn | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    let he = e - 112;
    if he >= 31 {
        return sgn | 0x7c00u;
    }
    var q: u32;
    var rem: u32;
    var half: u32;
    if he <= 0 {
        if he < -10 {
            return sgn;
        }
        let shift = u32(126 - e);
        let mm = m | 0x800000u;
        q = mm >> shift;
        rem = mm & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
    } else {
        q = (u32(he) << 10u) | (m >> 13u);
        rem = m & 0x1fffu;
        half = 0x1000u;
    }
    if rem > half || (rem == half && (q & 1u) == 1u) {
        q += 1u;
    }
    return sgn | q;
}

// Element j of `head` rotated by the angles of token i.
fn rotated(j: u32, i: u32) -> f32 {
    let half = p.head_dim / 2u;
    let a = p.angles_off + i * p.head_dim;
    if p.neox == 1u {
        let kk = j % half;
        let c = data[a + kk];
        let s = data[a + half + kk];
        if j < half {
            return head[j] * c - head[j + half] * s;
        }
        return head[j - half] * s + head[j] * c;
    }
    let kk = j / 2u;
    let c = data[a + kk];
    let s = data[a + half + kk];
    if j % 2u == 0u {
        return head[j] * c - head[j + 1u] * s;
    }
    return head[j - 1u] * s + head[j] * c;
}

// Stores elements o, o + 1 (o even) of a cache.
fn put(is_v: bool, o: u32, v0: f32, v1: f32) {
    if p.kv == KV_F16 {
        let word = f16_bits(v0) | (f16_bits(v1) << 16u);
        if is_v {
            vc[o / 2u] = word;
        } else {
            kc[o / 2u] = word;
        }
    } else if is_v {
        vc[o] = bitcast<u32>(v0);
        vc[o + 1u] = bitcast<u32>(v1);
    } else {
        kc[o] = bitcast<u32>(v0);
        kc[o + 1u] = bitcast<u32>(v1);
    }
}

// int8: stores word `w` (elements 4w .. 4w + 3) of `stored` at element `o` (a multiple
// of 4) of a cache, and the scale of its block from the block's first word. The CPU's
// `quantize_block`: d = max |x| / 127, q = round(x / d) as round(x * (1 / d)), half to
// even (WGSL's `round`), |x / d| <= 127.
fn put_q8(is_v: bool, o: u32, w: u32) {
    let b0 = w / 8u * 32u;
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs(stored[b0 + j]));
    }
    let d = amax / 127.0;
    let id = select(0.0, 1.0 / d, d > 0.0);
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let qv = i32(clamp(round(stored[4u * w + j] * id), -127.0, 127.0));
        word |= (u32(qv) & 0xffu) << (8u * j);
    }
    let s = p.scales + o / 32u;
    if is_v {
        vc[o / 4u] = word;
        if w % 8u == 0u {
            vc[s] = bitcast<u32>(d);
        }
    } else {
        kc[o / 4u] = word;
        if w % 8u == 0u {
            kc[s] = bitcast<u32>(d);
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x + p.h_first;
    let i = wid.y;
    let hd = p.head_dim;
    let nh = p.q_dim / hd;
    let nkv = p.kv_dim / hd;
    if h < nh {
        let base = i * p.q_dim + h * hd;
        for (var j = lid.x; j < hd; j += 64u) {
            head[j] = q[base + j];
        }
        workgroupBarrier();
        for (var j = lid.x; j < hd; j += 64u) {
            q[base + j] = rotated(j, i);
        }
        return;
    }
    let is_v = h >= nh + nkv;
    let kh = select(h - nh, h - nh - nkv, is_v);
    let base = i * p.kv_dim + kh * hd;
    let rot = p.rotate == 1u && !is_v;
    if rot {
        for (var j = lid.x; j < hd; j += 64u) {
            head[j] = k[base + j];
        }
        workgroupBarrier();
    }
    if p.store == 1u && p.kv == KV_I8 {
        // Whole blocks are quantized together: the head's values first.
        for (var j = lid.x; j < hd; j += 64u) {
            var x: f32;
            if rot {
                x = rotated(j, i);
                k[base + j] = x;
            } else if is_v {
                x = v[base + j];
            } else {
                x = k[base + j];
            }
            stored[j] = x;
        }
        workgroupBarrier();
        for (var w = lid.x; w < hd / 4u; w += 64u) {
            put_q8(is_v, p.dst + base + 4u * w, w);
        }
        return;
    }
    for (var e = lid.x; e < hd / 2u; e += 64u) {
        let j = 2u * e;
        var v0: f32;
        var v1: f32;
        if rot {
            v0 = rotated(j, i);
            v1 = rotated(j + 1u, i);
            k[base + j] = v0;
            k[base + j + 1u] = v1;
        } else if is_v {
            v0 = v[base + j];
            v1 = v[base + j + 1u];
        } else {
            v0 = k[base + j];
            v1 = k[base + j + 1u];
        }
        if p.store == 1u {
            put(is_v, p.dst + base + j, v0, v1);
        }
    }
}
