// matvec.wgsl's input: token t0 + t's row of the activation bound as x.

fn stage(t0: u32, nt: u32, lane: u32) {}

fn x_at(t0: u32, t: u32, c: u32) -> f32 {
    return x[(t0 + t) * p.head.y + c];
}
