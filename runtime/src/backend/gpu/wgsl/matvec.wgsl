// Up to three matrices ("parts": weight chunks) over the same input in one dispatch:
// y_m[t][out_row0 + r] = sum_c W_m[r][c] * x[t][c] for the rows r of part m and `n`
// tokens. One thread per output row and tile of TOK tokens (each dequantized block is used
// for TOK tokens), f32 accumulation, no shared memory and no barriers. The workgroups of
// part m start at its `first_group`, so a workgroup reads one matrix only.
//
// Modes (what a result does to y): 0 stores it (Q, K and V in one dispatch; the head's
// chunks); 1 adds it (the residual connection after the output and down projections);
// 2 (SwiGLU) computes row r of parts 0 (gate) and 1 (up) in the same thread and stores
// silu(gate) * up into y0, so the up projection is never written.
//
// The input x[t][c] is read through `x_at`, defined by one of two files prefixed to this
// one (two pipelines): `matvec_x.wgsl` reads the activation; `matvec_xnorm.wgsl` stages
// the RMSNorm of the residual stream's rows in workgroup memory first, so a norm and the
// projection that reads it are one dispatch.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = part_index(wid.x);
    let part = p.parts[3u * m];
    let t0 = wid.y * TOK;
    let nt = min(TOK, p.head.x - t0);
    stage(t0, nt, lid.x);
    let r = (wid.x - part.w) * 64u + lid.x;
    if r >= part.x {
        return;
    }
    let mode = p.head.z;
    var acc: array<f32, TOK>;
    switch m {
        case 0u: {
            acc = row_dot0(r, t0, nt);
        }
        case 1u: {
            acc = row_dot1(r, t0, nt);
        }
        default: {
            acc = row_dot2(r, t0, nt);
        }
    }
    var up = array<f32, TOK>(0.0, 0.0, 0.0, 0.0);
    if mode == MODE_SWIGLU {
        up = row_dot1(r, t0, nt);
    }
    store(m, part, r, t0, nt, acc, up);
}

// PER MATRIX
// The rest of the file is written once per bound matrix, `#` its index. (Choosing the matrix at each word read, a `switch` in one `word`, made lavapipe's
// decode 1.5x slower.)

fn word#(i: u32) -> u32 {
    return w#[i];
}

// Row r of part # times tokens t0 .. t0 + nt.
fn row_dot#(r: u32, t0: u32, nt: u32) -> array<f32, TOK> {
    let a = p.parts[3u * # + 1u];
    let wv = WeightView(a.x, a.y, a.z, a.w, p.parts[3u * # + 2u].x);
    var acc = array<f32, TOK>(0.0, 0.0, 0.0, 0.0);
    var blk: array<f32, 32>;
    let nb = (wv.cols + 31u) / 32u;
    for (var b = 0u; b < nb; b++) {
        let len = min(32u, wv.cols - 32u * b);
        load_block#(wv, r * wv.cols + 32u * b, len, &blk);
        for (var t = 0u; t < nt; t++) {
            var s = 0.0;
            for (var j = 0u; j < len; j++) {
                s += blk[j] * x_at(t0, t, 32u * b + j);
            }
            acc[t] += s;
        }
    }
    return acc;
}
