// matvec.wgsl with int8 activations (Precision::Int8, and Mixed's int8 matrices): the same
// parameters, bindings, parts and modes (0 store, 1 add, 2 SwiGLU of parts 0 and 1), for
// block-quantized matrices only. Each workgroup quantizes its TOK tokens' input, CHUNK
// blocks of 32 columns at a time, into workgroup memory (so no dispatch of its own and no
// buffer), then each thread dots its row with it by `dot4I8Packed`, per 32-block (the CPU's
// scheme, backend/cpu/kernels/int8.rs):
//   int8 weights:          dw dx sum(qw qx)
//   int4 with mins:        dw dx sum(qw qx) + m s      (m the block's f16 minimum)
//   symmetric int4:        the same with m = -8 dw     (qw the raw nibbles 0..15)
// where dx is the activation block's scale and s = dx sum(qx). Nibbles are packed as bytes
// 0..15, which are the same numbers signed; sums are i32 (exact), accumulation f32.
//
// The quantization is the CPU's quantize_block bit for bit: d = amax / 127, q = round(x / d)
// computed as round(x * (1 / d)), half to even (WGSL's round), s = d * sum(q). A GPU's
// division may be off by 2.5 ULP (Vulkan's bound), so d and 1 / d are correctly rounded here
// in integer arithmetic from the bits (q8_scale; checked against f32 division for every
// mantissa and every exponent used). Blocks whose largest magnitude is below 2^-118 (d would
// be subnormal) fall back to the float division.

// Blocks of 32 columns quantized per pass: 5 KiB of workgroup memory (WebGPU guarantees 16).
const CHUNK: u32 = 32u;

// Token t's block b of the current pass is slot t * CHUNK + b: its 32 int8 values as 8
// packed words (natural order, element 4j + k in byte k of word j), d, and d * sum(q).
var<workgroup> xq: array<u32, 1024>;
var<workgroup> xd: array<f32, 128>;
var<workgroup> xs: array<f32, 128>;

// q * 2^k (q in [2^24, 2^26), `inexact` when bits below q were dropped) rounded to the
// nearest f32, ties to even; the result must be a normal number.
fn round_quotient(q: u32, inexact: bool, k: i32) -> f32 {
    let drop = select(1u, 2u, q >= 0x2000000u);
    var mant = q >> drop;
    let half = (q >> (drop - 1u)) & 1u;
    let sticky = inexact || (drop == 2u && (q & 1u) != 0u);
    if half == 1u && (sticky || (mant & 1u) == 1u) {
        mant += 1u;
    }
    var field = u32(k + i32(drop) + 150);
    if mant == 0x1000000u {
        mant = 0x800000u;
        field += 1u;
    }
    return bitcast<f32>((field << 23u) | (mant & 0x7fffffu));
}

// (d, 1 / d) for a block whose largest magnitude has the bits `amax`: d = amax / 127 and
// its reciprocal, each correctly rounded (0 and 0 for an all-zero block).
fn q8_scale(amax: u32) -> vec2<f32> {
    let e = amax >> 23u;
    if e < 9u || e >= 255u {
        let d = bitcast<f32>(amax) / 127.0;
        return vec2<f32>(d, select(0.0, 1.0 / d, d > 0.0));
    }
    // amax = ma 2^(e - 150); d = (ma 2^8 / 127) 2^(e - 158).
    let ma = (amax & 0x7fffffu) | 0x800000u;
    let d = round_quotient((ma << 8u) / 127u, (ma << 8u) % 127u != 0u, i32(e) - 158);
    // d = md 2^(ed - 150); 1 / d = (2^48 / md) 2^(102 - ed), 2^48 / md by long division in
    // base 256 (remainders stay below 2^24).
    let md = (bitcast<u32>(d) & 0x7fffffu) | 0x800000u;
    let ed = bitcast<u32>(d) >> 23u;
    var q = 0x1000000u / md;
    var r = 0x1000000u % md;
    for (var i = 0u; i < 3u; i++) {
        q = q * 256u + (r * 256u) / md;
        r = (r * 256u) % md;
    }
    return vec2<f32>(d, round_quotient(q, r != 0u, 102 - i32(ed)));
}

// Quantizes block `blk` of token `tok`'s input into workgroup slot `slot`.
fn quantize_block(tok: u32, blk: u32, slot: u32) {
    let x0 = tok * p.head.y + 32u * blk;
    // The largest magnitude from the bits (their order is the numbers'), NaN left out as
    // f32::max leaves it out on the CPU.
    var amax = 0u;
    for (var j = 0u; j < 32u; j++) {
        let a = bitcast<u32>(x[x0 + j]) & 0x7fffffffu;
        amax = select(amax, max(amax, a), a <= 0x7f800000u);
    }
    let di = q8_scale(amax);
    var sum = 0;
    for (var j = 0u; j < 8u; j++) {
        var packed = 0u;
        for (var k = 0u; k < 4u; k++) {
            let q = i32(round(x[x0 + 4u * j + k] * di.y));
            sum += q;
            packed |= (u32(q) & 0xffu) << (8u * k);
        }
        xq[8u * slot + j] = packed;
    }
    xd[slot] = di.x;
    xs[slot] = di.x * f32(sum);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = part_index(wid.x);
    let part = p.parts[3u * m];
    let r = (wid.x - part.w) * 64u + lid.x;
    // Threads past the last row quantize with the others (every thread reaches the
    // barriers), compute the last row again and store nothing.
    let row = min(r, part.x - 1u);
    let mode = p.head.z;
    let t0 = wid.y * TOK;
    let nt = min(TOK, p.head.x - t0);
    let nb = p.head.y / 32u;
    var acc = array<f32, TOK>(0.0, 0.0, 0.0, 0.0);
    var up = array<f32, TOK>(0.0, 0.0, 0.0, 0.0);
    for (var c0 = 0u; c0 < nb; c0 += CHUNK) {
        let cb = min(CHUNK, nb - c0);
        // The previous pass's slots are read by every thread before they are rewritten.
        workgroupBarrier();
        for (var i = lid.x; i < nt * cb; i += 64u) {
            let t = i / cb;
            let b = i % cb;
            quantize_block(t0 + t, c0 + b, t * CHUNK + b);
        }
        workgroupBarrier();
        switch m {
            case 0u: {
                chunk_dot0(row, c0, cb, nt, &acc);
            }
            case 1u: {
                chunk_dot1(row, c0, cb, nt, &acc);
            }
            default: {
                chunk_dot2(row, c0, cb, nt, &acc);
            }
        }
        if mode == MODE_SWIGLU {
            chunk_dot1(row, c0, cb, nt, &up);
        }
    }
    if r >= part.x {
        return;
    }
    store(m, part, r, t0, nt, acc, up);
}

// PER MATRIX
// The rest of the file is written once per bound matrix, `#` its index (as matvec.wgsl).

fn word#(i: u32) -> u32 {
    return w#[i];
}

// Adds row r of part # times the quantized blocks c0 .. c0 + cb of tokens 0 .. nt of
// this pass to `acc`.
fn chunk_dot#(r: u32, c0: u32, cb: u32, nt: u32, acc: ptr<function, array<f32, TOK>>) {
    let a = p.parts[3u * # + 1u];
    let wv = WeightView(a.x, a.y, a.z, a.w, p.parts[3u * # + 2u].x);
    let nb = wv.cols / 32u;
    for (var b = 0u; b < cb; b++) {
        let blk = r * nb + c0 + b;
        let dw = half_at#(wv.scales, blk * 32u / wv.group);
        var isum = array<i32, TOK>(0, 0, 0, 0);
        if wv.dtype == DT_Q8 {
            for (var j = 0u; j < 8u; j++) {
                let w = word#(8u * blk + j);
                for (var t = 0u; t < nt; t++) {
                    isum[t] += dot4I8Packed(w, xq[8u * (t * CHUNK + b) + j]);
                }
            }
            for (var t = 0u; t < nt; t++) {
                (*acc)[t] += dw * xd[t * CHUNK + b] * f32(isum[t]);
            }
        } else {
            // Byte k of the block's 16 holds element k in its low nibble and k + 16 in
            // its high one: word j's low nibbles meet activation word j, its high ones
            // activation word 4 + j.
            for (var j = 0u; j < 4u; j++) {
                let w = word#(4u * blk + j);
                let lo = w & 0x0f0f0f0fu;
                let hi = (w >> 4u) & 0x0f0f0f0fu;
                for (var t = 0u; t < nt; t++) {
                    let s = 8u * (t * CHUNK + b);
                    isum[t] += dot4I8Packed(lo, xq[s + j]) + dot4I8Packed(hi, xq[s + 4u + j]);
                }
            }
            var mw = -8.0 * dw;
            if wv.dtype == DT_Q4A {
                mw = half_at#(wv.mins, blk);
            }
            for (var t = 0u; t < nt; t++) {
                let s = t * CHUNK + b;
                (*acc)[t] += dw * xd[s] * f32(isum[t]) + mw * xs[s];
            }
        }
    }
}
