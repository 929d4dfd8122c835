// Stores K and V (n rows of kv_dim) at element `dst` of the caches: f32 as its bits, f16
// rounded to nearest-even (bit-identical to the CPU's `half::f16::from_f32`), two per word.
// One thread per pair of elements.

struct Params {
    pairs: u32,
    dst: u32,
    // 0: f32, 1: f16.
    kv_f16: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<u32>;
@group(0) @binding(4) var<storage, read_write> vc: array<u32>;

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

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    if e >= p.pairs {
        return;
    }
    if p.kv_f16 == 1u {
        let o = p.dst / 2u + e;
        kc[o] = f16_bits(k[2u * e]) | (f16_bits(k[2u * e + 1u]) << 16u);
        vc[o] = f16_bits(v[2u * e]) | (f16_bits(v[2u * e + 1u]) << 16u);
    } else {
        let o = p.dst + 2u * e;
        kc[o] = bitcast<u32>(k[2u * e]);
        kc[o + 1u] = bitcast<u32>(k[2u * e + 1u]);
        vc[o] = bitcast<u32>(v[2u * e]);
        vc[o + 1u] = bitcast<u32>(v[2u * e + 1u]);
    }
}
