// The batch (prefill) twin of matvec.wgsl, tiled: the same parameters, bindings, parts
// (matvec_common.wgsl) and modes (0 store, 1 add, 2 SwiGLU of parts 0 and 1), for y_m[t][out_row0 + r] =
// sum_c W_m[r][c] * x[t][c]. A workgroup computes a tile of TR rows x TT tokens: per
// 32-column block it dequantizes the tile's weight rows (and, for SwiGLU, the up rows)
// and copies the tokens' activations into workgroup memory once, then each of its 64
// threads accumulates 4 rows x 4 tokens (4 x 4 more for up) from there in f32. So a
// weight block is dequantized once per TT tokens (matvec.wgsl: once per 4) and read from
// the buffer once per workgroup. Rows past a part's end and tokens past n are computed
// from whatever the tile holds and never written.

// Rows and tokens of a tile (kernels.rs: MATMUL_ROWS, MATMUL_TOKENS).
const TR: u32 = 32u;
const TT: u32 = 32u;
// A staged row's stride: 33, so the 8 rows (or tokens) a warp reads at one column fall
// in different banks.
const PAD: u32 = 33u;

// The weight rows of the tile (then the up rows for SwiGLU), the tokens' activations.
var<workgroup> wt: array<f32, 2112>;
var<workgroup> xt: array<f32, 1056>;

// Columns 32b .. 32b + len of row r of part m into wt from element `at`.
fn stage(m: u32, r: u32, b: u32, len: u32, at: u32) {
    var blk: array<f32, 32>;
    switch m {
        case 0u: {
            blk = block0(r, b, len);
        }
        case 1u: {
            blk = block1(r, b, len);
        }
        default: {
            blk = block2(r, b, len);
        }
    }
    for (var j = 0u; j < len; j++) {
        wt[at + j] = blk[j];
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = part_index(wid.x);
    let part = p.parts[3u * m];
    let rows = part.x;
    let r0 = (wid.x - part.w) * TR;
    let t0 = wid.y * TT;
    let n = p.head.x;
    let x_stride = p.head.y;
    let mode = p.head.z;
    let cols = p.parts[3u * m + 1u].y;
    let swiglu = mode == MODE_SWIGLU;
    // This thread's rows r0 + tr + 8i and tokens t0 + tt + 8j (i, j < 4).
    let tr = lid.x % 8u;
    let tt = lid.x / 8u;
    var acc: array<f32, 16>;
    var acc_up: array<f32, 16>;
    let nb = (cols + 31u) / 32u;
    for (var b = 0u; b < nb; b++) {
        let len = min(32u, cols - 32u * b);
        // Jobs: TR weight rows, TT token rows (one each for the 64 threads), then TR up
        // rows for SwiGLU.
        let jobs = select(TR + TT, 2u * TR + TT, swiglu);
        for (var job = lid.x; job < jobs; job += 64u) {
            if job < TR {
                if r0 + job < rows {
                    stage(m, r0 + job, b, len, job * PAD);
                }
            } else if job < TR + TT {
                let t = job - TR;
                if t0 + t < n {
                    let xb = (t0 + t) * x_stride + 32u * b;
                    for (var j = 0u; j < len; j++) {
                        xt[t * PAD + j] = x[xb + j];
                    }
                }
            } else if r0 + job - TR - TT < rows {
                stage(1u, r0 + job - TR - TT, b, len, (job - TT) * PAD);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < len; k++) {
            var xv: array<f32, 4>;
            for (var j = 0u; j < 4u; j++) {
                xv[j] = xt[(tt + 8u * j) * PAD + k];
            }
            for (var i = 0u; i < 4u; i++) {
                let wv = wt[(tr + 8u * i) * PAD + k];
                for (var j = 0u; j < 4u; j++) {
                    acc[4u * i + j] += wv * xv[j];
                }
            }
            if swiglu {
                for (var i = 0u; i < 4u; i++) {
                    let wv = wt[(TR + tr + 8u * i) * PAD + k];
                    for (var j = 0u; j < 4u; j++) {
                        acc_up[4u * i + j] += wv * xv[j];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + tr + 8u * i;
        for (var j = 0u; j < 4u; j++) {
            let t = t0 + tt + 8u * j;
            if r < rows && t < n {
                put_result(m, t * part.z + part.y + r, acc[4u * i + j], acc_up[4u * i + j]);
            }
        }
    }
}

// PER MATRIX
// The rest of the file is written once per bound matrix, `#` its index (see matvec.wgsl).

fn word#(i: u32) -> u32 {
    return w#[i];
}

// Columns 32b .. 32b + len of row r of part #, dequantized.
fn block#(r: u32, b: u32, len: u32) -> array<f32, 32> {
    let a = p.parts[3u * # + 1u];
    let wv = WeightView(a.x, a.y, a.z, a.w, p.parts[3u * # + 2u].x);
    var blk: array<f32, 32>;
    load_block#(wv, r * wv.cols + 32u * b, len, &blk);
    return blk;
}
