// The largest logits for a sampler (Sampler::sample_among): every (logit, id) of
// x[off .. off + len] whose logit is at least the k-th largest, ties included, in any
// order, up to `cap` of them; one workgroup. out[0] = how many there are (written only up
// to cap: the host reads every logit back when there are more), or 0xffffffff when a
// logit is NaN or infinite; out[2 + 2j], out[3 + 2j] = logit bits, id.
//
// The k-th largest is found by its order-preserving key (the f32 bits with the sign bit
// flipped, all bits for a negative number), one bit at a time from the top: 32 counting
// passes over the logits, then one pass writes those at least it.

struct Params {
    len: u32,
    off: u32,
    k: u32,
    cap: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> count: atomic<u32>;
var<workgroup> non_finite: atomic<u32>;

fn key(bits: u32) -> u32 {
    return select(bits | 0x80000000u, ~bits, (bits >> 31u) == 1u);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    if lid == 0u {
        atomicStore(&non_finite, 0u);
    }
    workgroupBarrier();
    for (var i = lid; i < p.len; i += 256u) {
        if (bitcast<u32>(x[p.off + i]) & 0x7f800000u) == 0x7f800000u {
            atomicStore(&non_finite, 1u);
        }
    }
    if workgroupUniformLoad(&non_finite) != 0u {
        if lid == 0u {
            out[0] = 0xffffffffu;
        }
        return;
    }
    var prefix = 0u;
    for (var b = 0u; b < 32u; b++) {
        let cand = prefix | (0x80000000u >> b);
        if lid == 0u {
            atomicStore(&count, 0u);
        }
        workgroupBarrier();
        var c = 0u;
        for (var i = lid; i < p.len; i += 256u) {
            if key(bitcast<u32>(x[p.off + i])) >= cand {
                c += 1u;
            }
        }
        atomicAdd(&count, c);
        if workgroupUniformLoad(&count) >= p.k {
            prefix = cand;
        }
        // Everyone has read the count before the next pass resets it.
        workgroupBarrier();
    }
    if lid == 0u {
        atomicStore(&count, 0u);
    }
    workgroupBarrier();
    for (var i = lid; i < p.len; i += 256u) {
        let bits = bitcast<u32>(x[p.off + i]);
        if key(bits) >= prefix {
            let j = atomicAdd(&count, 1u);
            if j < p.cap {
                out[2u + 2u * j] = bits;
                out[3u + 2u * j] = i;
            }
        }
    }
    let n = workgroupUniformLoad(&count);
    if lid == 0u {
        out[0] = n;
    }
}
