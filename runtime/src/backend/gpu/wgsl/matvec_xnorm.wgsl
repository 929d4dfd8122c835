// matvec.wgsl's input: the RMSNorm of the residual stream x (rows p.norm.x + t0 + t),
// scaled by the norm's weights g, staged once per workgroup: the workgroup reduces each
// token's sum of squares, then writes x * g / rms into `xs`. Needs TOK * cols <= XS
// (the host falls back to a separate RMSNorm beyond).
//
// Staging costs barriers; the alternative without them, every thread summing the squares
// and scaling each weight block by g itself, made lavapipe's decode 0.65x.

const XS: u32 = 4096u;
var<workgroup> xs: array<f32, XS>;
var<workgroup> sumsq: array<vec4<f32>, 64>;

fn stage(t0: u32, nt: u32, lane: u32) {
    let cols = p.parts[1u].y;
    var part = vec4<f32>(0.0);
    for (var t = 0u; t < nt; t++) {
        let xb = (p.norm.x + t0 + t) * p.head.y;
        for (var c = lane; c < cols; c += 64u) {
            part[t] += x[xb + c] * x[xb + c];
        }
    }
    sumsq[lane] = part;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lane < k {
            sumsq[lane] += sumsq[lane + k];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(sumsq[0] / f32(cols) + bitcast<f32>(p.norm.y));
    for (var t = 0u; t < nt; t++) {
        let xb = (p.norm.x + t0 + t) * p.head.y;
        for (var c = lane; c < cols; c += 64u) {
            xs[t * cols + c] = x[xb + c] * g[c] * inv[t];
        }
    }
    workgroupBarrier();
}

fn x_at(t0: u32, t: u32, c: u32) -> f32 {
    return xs[t * p.parts[1u].y + c];
}
