// Rotates every head of Q and K (n rows) by the angles of their positions: one thread per
// rotated pair. `data` holds per position `head_dim / 2` cosines then as many sines.

struct Params {
    n: u32,
    q_dim: u32,
    kv_dim: u32,
    head_dim: u32,
    // 0: interleaved pairs (2k, 2k + 1); 1: NeoX pairs (k, k + head_dim / 2).
    neox: u32,
    angles_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;

fn pair_index(k: u32, half: u32) -> vec2<u32> {
    if p.neox == 1u {
        return vec2<u32>(k, k + half);
    }
    return vec2<u32>(2u * k, 2u * k + 1u);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let pairs = (p.q_dim + p.kv_dim) / 2u;
    let i = gid.y;
    if gid.x >= pairs || i >= p.n {
        return;
    }
    let a = p.angles_off + i * p.head_dim;
    if gid.x < p.q_dim / 2u {
        let h = gid.x / half;
        let kk = gid.x % half;
        let c = data[a + kk];
        let s = data[a + half + kk];
        let ix = pair_index(kk, half) + vec2<u32>(i * p.q_dim + h * p.head_dim);
        let x0 = q[ix.x];
        let x1 = q[ix.y];
        q[ix.x] = x0 * c - x1 * s;
        q[ix.y] = x0 * s + x1 * c;
    } else {
        let pk = gid.x - p.q_dim / 2u;
        let h = pk / half;
        let kk = pk % half;
        let c = data[a + kk];
        let s = data[a + half + kk];
        let ix = pair_index(kk, half) + vec2<u32>(i * p.kv_dim + h * p.head_dim);
        let x0 = k[ix.x];
        let x1 = k[ix.y];
        k[ix.x] = x0 * c - x1 * s;
        k[ix.y] = x0 * s + x1 * c;
    }
}
