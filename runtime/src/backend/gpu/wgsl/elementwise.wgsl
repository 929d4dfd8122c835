// a[i] = f(a[i], b[...]) over `len` elements: one thread per element.
// mode 0: a += b (residual); 1: a += b[i % width] (bias); 2: a = silu(a) * b (SwiGLU).

struct Params {
    len: u32,
    mode: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i >= p.len {
        return;
    }
    switch p.mode {
        case 0u: {
            a[i] += b[i];
        }
        case 1u: {
            a[i] += b[i % p.width];
        }
        default: {
            let g = a[i];
            a[i] = g / (1.0 + exp(-g)) * b[i];
        }
    }
}
