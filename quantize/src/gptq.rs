//! GPTQ (Frantar et al. 2022, "Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers"): a matrix quantized column by column, each column's
//! rounding error fed back into the columns not yet quantized through the inverse
//! Hessian `H = 2XᵀX` of the layer's calibration inputs `X`, so the layer's output
//! `XWᵀ`, not its weights, stays close. Groups and grids are the `.glint` dtypes'
//! ([`glint_format::DType`]): the result is bytes the runtime runs as they are.

use glint_format::quant::Planes;
use glint_format::{BLOCK, DType};
use half::f16;

/// How [`gptq`] runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Columns quantized between two updates of the rest (the paper's lazy batch).
    pub block: usize,
    /// Damping added to the Hessian's diagonal, as a share of its mean (0.01: 1%).
    pub damp: f64,
    /// Quantize columns by decreasing Hessian diagonal ("act-order"); the groups'
    /// scales are then fixed from the unquantized weights first ("static groups"), as
    /// the format's groups are runs of consecutive columns.
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            block: 128,
            damp: 0.01,
            act_order: false,
        }
    }
}

/// Why a matrix could not be quantized.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GptqError {
    /// The dtype is not a block-quantized one.
    #[error("{0} is not a quantized dtype")]
    NotQuantized(&'static str),
    /// Rows of `cols` are not whole groups, or the Hessian is not `cols × cols`.
    #[error("a {rows}x{cols} matrix does not fit {dtype} or a Hessian of {hessian} values")]
    Shape {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Target dtype.
        dtype: &'static str,
        /// Values in the Hessian given.
        hessian: usize,
    },
    /// The damped Hessian stayed singular (non-finite calibration inputs).
    #[error("the Hessian is not positive definite even with damping")]
    Singular,
}

/// The integer grid of one group: `x ≈ scale * q + min`, `q` in `lo..=hi`, with `scale`
/// and `min` rounded to f16 as the file stores them.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Grid {
    scale: f32,
    min: f32,
    lo: i32,
    hi: i32,
}

impl Grid {
    fn quantize(&self, x: f32) -> i32 {
        if self.scale == 0.0 {
            return self.lo.max(0).min(self.hi);
        }
        (((x - self.min) / self.scale).round() as i32).clamp(self.lo, self.hi)
    }

    fn value(&self, q: i32) -> f32 {
        self.scale * q as f32 + self.min
    }
}

/// Clipping ratios tried for each group's range: the one with the least squared error
/// wins (shrinking the range trades the outliers' error for finer steps elsewhere).
const CLIP: [f32; 8] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65];

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The grid of `dtype` for the values `x`, with weights `w` on each element's squared
/// error (the Hessian's diagonal), the clipping ratio searched over [`CLIP`].
fn fit_grid(dtype: DType, x: &[f32], w: &[f32]) -> Grid {
    let candidate = |clip: f32| -> Grid {
        match dtype {
            DType::Q4G32A => {
                let min = x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let (min, max) = (min * clip, max * clip);
                Grid {
                    scale: f16_round((max - min) / 15.0),
                    min: f16_round(min),
                    lo: 0,
                    hi: 15,
                }
            }
            DType::Q8G32 => {
                let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs())) * clip;
                Grid {
                    scale: f16_round(amax / 127.0),
                    min: 0.0,
                    lo: -127,
                    hi: 127,
                }
            }
            _ => {
                // As ggml's Q4_0: the value of largest magnitude maps to -8.
                let max = x
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                Grid {
                    scale: f16_round(max * clip / -8.0),
                    min: 0.0,
                    lo: -8,
                    hi: 7,
                }
            }
        }
    };
    let error = |g: &Grid| -> f32 {
        x.iter()
            .zip(w)
            .map(|(&v, &wt)| wt * (v - g.value(g.quantize(v))).powi(2))
            .sum()
    };
    CLIP.iter()
        .map(|&c| candidate(c))
        .min_by(|a, b| error(a).total_cmp(&error(b)))
        .expect("clipping ratios")
}

/// Writes integer values with their groups' grids in `dtype`'s file layout.
fn encode(dtype: DType, rows: usize, cols: usize, q: &[i32], grids: &[Grid]) -> Vec<u8> {
    let group = dtype.group().unwrap_or(BLOCK);
    let mut p = Planes::default();
    for g in grids {
        p.scales
            .extend_from_slice(&f16::from_f32(g.scale).to_le_bytes());
        if dtype == DType::Q4G32A {
            p.mins
                .extend_from_slice(&f16::from_f32(g.min).to_le_bytes());
        }
    }
    let offset = if dtype == DType::Q4G32A { 0 } else { 8 };
    for block in q.chunks_exact(BLOCK) {
        if dtype == DType::Q8G32 {
            p.values.extend(block.iter().map(|&v| v as i8 as u8));
        } else {
            let nib = |v: i32| (v + offset) as u8 & 0x0f;
            for j in 0..BLOCK / 2 {
                p.values
                    .push(nib(block[j]) | nib(block[j + BLOCK / 2]) << 4);
            }
        }
    }
    debug_assert_eq!(grids.len(), rows * cols / group);
    p.into_bytes(dtype, (rows * cols) as u64)
}

/// A quantized matrix: the bytes as the file stores them and their values.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// The tensor's bytes in `dtype`'s layout.
    pub bytes: Vec<u8>,
    /// The dequantized values, row-major.
    pub values: Vec<f32>,
}

/// Round-to-nearest onto the same grids [`gptq`] uses (clipping searched, each
/// element's error weighted by `diag`, one weight per column): the baseline GPTQ is
/// measured against.
pub fn rtn(dtype: DType, w: &[f32], rows: usize, cols: usize, diag: &[f32]) -> Quantized {
    let group = dtype.group().unwrap_or(BLOCK);
    let mut q = vec![0i32; rows * cols];
    let mut grids = Vec::with_capacity(rows * cols / group);
    let mut values = vec![0f32; rows * cols];
    for r in 0..rows {
        for g in 0..cols / group {
            let span = r * cols + g * group..r * cols + (g + 1) * group;
            let grid = fit_grid(dtype, &w[span.clone()], &diag[g * group..(g + 1) * group]);
            for i in span {
                q[i] = grid.quantize(w[i]);
                values[i] = grid.value(q[i]);
            }
            grids.push(grid);
        }
    }
    Quantized {
        bytes: encode(dtype, rows, cols, &q, &grids),
        values,
    }
}

/// Quantizes the row-major `rows × cols` matrix `w` to `dtype` with GPTQ, given the
/// `cols × cols` Hessian `h` of its inputs (any positive multiple of `XᵀX`).
pub fn gptq(
    dtype: DType,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    opts: GptqOptions,
) -> Result<Quantized, GptqError> {
    let group = dtype.group().ok_or(GptqError::NotQuantized(dtype.name()))?;
    if w.len() != rows * cols || h.len() != cols * cols || !cols.is_multiple_of(group) {
        return Err(GptqError::Shape {
            rows,
            cols,
            dtype: dtype.name(),
            hessian: h.len(),
        });
    }
    let mut h: Vec<f64> = h.iter().map(|&x| x as f64).collect();
    // Columns, each a vector over the rows (the updates below walk columns).
    let mut wt = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            wt[c * rows + r] = w[r * cols + c];
        }
    }
    // Inputs that are always zero: their weights do not matter; keep H invertible.
    for c in 0..cols {
        if h[c * cols + c] == 0.0 {
            h[c * cols + c] = 1.0;
            wt[c * rows..(c + 1) * rows].fill(0.0);
        }
    }
    let diag: Vec<f32> = (0..cols).map(|c| h[c * cols + c] as f32).collect();
    let mut perm: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    // Static groups (act-order): every grid from the unquantized weights, first.
    let n_groups = cols / group;
    let mut grids: Vec<Option<Grid>> = vec![None; rows * n_groups];
    let fit = |wt: &[f32], grids: &mut [Option<Grid>], g: usize| {
        let mut x = vec![0f32; group];
        for r in 0..rows {
            for (j, v) in x.iter_mut().enumerate() {
                *v = wt[(g * group + j) * rows + r];
            }
            grids[r * n_groups + g] = Some(fit_grid(dtype, &x, &diag[g * group..(g + 1) * group]));
        }
    };
    if opts.act_order {
        for g in 0..n_groups {
            fit(&wt, &mut grids, g);
        }
    }
    let mean_diag = diag.iter().map(|&d| d as f64).sum::<f64>() / cols as f64;
    let hp: Vec<f64> = (0..cols * cols)
        .map(|i| h[perm[i / cols] * cols + perm[i % cols]])
        .collect();
    let u = upper_inverse_cholesky(hp, cols, opts.damp * mean_diag)?;
    let mut q = vec![0i32; rows * cols];
    let block = opts.block.max(1);
    let mut err = vec![0f32; block * rows];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        for i in i1..i2 {
            let col = perm[i];
            if !opts.act_order && col.is_multiple_of(group) {
                fit(&wt, &mut grids, col / group);
            }
            let d = u[i * cols + i] as f32;
            let e = &mut err[(i - i1) * rows..(i - i1 + 1) * rows];
            for r in 0..rows {
                let grid = grids[r * n_groups + col / group].expect("grid fitted");
                let x = wt[col * rows + r];
                let v = grid.quantize(x);
                q[r * cols + col] = v;
                e[r] = (x - grid.value(v)) / d;
            }
            for j in i + 1..i2 {
                axpy(
                    &mut wt[perm[j] * rows..(perm[j] + 1) * rows],
                    -(u[i * cols + j] as f32),
                    e,
                );
            }
        }
        for j in i2..cols {
            let target = &mut wt[perm[j] * rows..(perm[j] + 1) * rows];
            for i in i1..i2 {
                let e = &err[(i - i1) * rows..(i - i1 + 1) * rows];
                axpy(target, -(u[i * cols + j] as f32), e);
            }
        }
    }
    let grids: Vec<Grid> = grids
        .into_iter()
        .map(|g| g.expect("every group fitted"))
        .collect();
    let values = (0..rows * cols)
        .map(|i| grids[(i / cols) * n_groups + (i % cols) / group].value(q[i]))
        .collect();
    Ok(Quantized {
        bytes: encode(dtype, rows, cols, &q, &grids),
        values,
    })
}

/// `y += a * x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The upper Cholesky factor `U` of `(H + damp·I)⁻¹` (`(H + damp·I)⁻¹ = UᵀU`), row-major
/// `n × n`; the damping is raised tenfold (up to four times) while `H` is not positive
/// definite.
fn upper_inverse_cholesky(h: Vec<f64>, n: usize, damp: f64) -> Result<Vec<f64>, GptqError> {
    let mut damp = damp.max(1e-8);
    for _ in 0..5 {
        let mut a = h.clone();
        for i in 0..n {
            a[i * n + i] += damp;
        }
        if let Some(u) = cholesky_lower(&mut a, n)
            .then(|| invert_lower(&mut a, n))
            .and_then(|()| {
                // H⁻¹ = L⁻ᵀL⁻¹; its lower factor Lh gives U = Lhᵀ.
                let mut inv = lt_l(&a, n);
                cholesky_lower(&mut inv, n).then_some(inv)
            })
        {
            let mut t = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..=i {
                    t[j * n + i] = u[i * n + j];
                }
            }
            return Ok(t);
        }
        damp *= 10.0;
    }
    Err(GptqError::Singular)
}

/// In place: the lower triangle of `a` becomes `L` with `a = LLᵀ` (the upper is zeroed);
/// false when `a` is not positive definite.
fn cholesky_lower(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let row_j = &mut a[j * n..(j + 1) * n];
        // row_j[k] for k < j already holds L[j][k]; compute L[j][j].
        let s: f64 = row_j[..j].iter().map(|x| x * x).sum();
        let d = row_j[j] - s;
        if !(d > 0.0 && d.is_finite()) {
            return false;
        }
        let d = d.sqrt();
        row_j[j] = d;
        row_j[j + 1..].fill(0.0);
        for i in j + 1..n {
            let (lo, hi) = a.split_at_mut(i * n);
            let lj = &lo[j * n..j * n + j];
            let ri = &mut hi[..n];
            let dot: f64 = ri[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            ri[j] = (ri[j] - dot) / d;
        }
    }
    true
}

/// In place: lower-triangular `L` becomes `L⁻¹`, row by row
/// (`row_i = (e_i − Σ_{k<i} L[i][k] row_k) / L[i][i]`).
fn invert_lower(a: &mut [f64], n: usize) {
    let l = a.to_vec();
    a.fill(0.0);
    for i in 0..n {
        let (done, rest) = a.split_at_mut(i * n);
        let row = &mut rest[..n];
        row[i] = 1.0;
        for k in 0..i {
            let lik = l[i * n + k];
            if lik != 0.0 {
                for (x, &y) in row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]) {
                    *x -= lik * y;
                }
            }
        }
        let d = l[i * n + i];
        row[..=i].iter_mut().for_each(|x| *x /= d);
    }
}

/// `MᵀM` for lower-triangular `M`.
fn lt_l(m: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * n];
    for k in 0..n {
        let row = &m[k * n..k * n + k + 1];
        for i in 0..=k {
            let mi = row[i];
            if mi == 0.0 {
                continue;
            }
            let o = &mut out[i * n..i * n + k + 1];
            for (o, &mj) in o.iter_mut().zip(row) {
                *o += mi * mj;
            }
        }
    }
    out
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`: the relative output error of `approx` against `w`
/// (row-major `rows × cols`) over inputs whose Hessian is `h`.
pub fn output_error(w: &[f32], approx: &[f32], rows: usize, cols: usize, h: &[f32]) -> f64 {
    let quad = |x: &dyn Fn(usize) -> f64| -> f64 {
        let mut t = 0f64;
        let mut hx = vec![0f64; cols];
        for r in 0..rows {
            hx.fill(0.0);
            for i in 0..cols {
                let xi = x(r * cols + i);
                if xi != 0.0 {
                    for (acc, &hij) in hx.iter_mut().zip(&h[i * cols..(i + 1) * cols]) {
                        *acc += xi * hij as f64;
                    }
                }
            }
            t += (0..cols).map(|j| x(r * cols + j) * hx[j]).sum::<f64>();
        }
        t
    };
    let num = quad(&|i| (w[i] - approx[i]) as f64);
    let den = quad(&|i| w[i] as f64);
    num / den.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glint_format::Matrix;
    use glint_format::quant::{dequantize_row, test_values};

    /// A Hessian `XᵀX` of `n` correlated inputs: a few shared directions plus noise,
    /// some inputs much larger than others (as activations are).
    fn hessian(cols: usize, n: usize, seed: u32) -> Vec<f32> {
        let base = test_values(n * 4, seed);
        let noise = test_values(n * cols, seed + 1);
        let mix = test_values(4 * cols, seed + 2);
        let mut x = vec![0f32; n * cols];
        for t in 0..n {
            for c in 0..cols {
                let shared: f32 = (0..4).map(|k| base[t * 4 + k] * mix[k * cols + c]).sum();
                let scale = if c % 7 == 0 { 4.0 } else { 1.0 };
                x[t * cols + c] = scale * (shared + 0.3 * noise[t * cols + c]);
            }
        }
        let mut h = vec![0f32; cols * cols];
        for t in 0..n {
            let row = &x[t * cols..(t + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += row[i] * row[j];
                }
            }
        }
        h
    }

    fn decode(dtype: DType, rows: usize, cols: usize, bytes: &[u8]) -> Vec<f32> {
        let m = Matrix::from_bytes(dtype, rows, cols, bytes).unwrap();
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            dequantize_row(&m, r, row);
        }
        out
    }

    #[test]
    fn gptq_lowers_the_output_error_of_round_to_nearest() {
        let (rows, cols) = (24, 128);
        let w = test_values(rows * cols, 7);
        let h = hessian(cols, 256, 11);
        let diag: Vec<f32> = (0..cols).map(|c| h[c * cols + c]).collect();
        for dtype in [DType::Q4G32A, DType::Q4G64, DType::Q4G128, DType::Q8G32] {
            let near = rtn(dtype, &w, rows, cols, &diag);
            for act_order in [false, true] {
                let opts = GptqOptions {
                    block: 32,
                    act_order,
                    ..GptqOptions::default()
                };
                let g = gptq(dtype, &w, rows, cols, &h, opts).unwrap();
                // The bytes decode (with the runtime's reference decoder) to the values.
                assert_eq!(decode(dtype, rows, cols, &g.bytes), g.values);
                let (e_rtn, e_gptq) = (
                    output_error(&w, &near.values, rows, cols, &h),
                    output_error(&w, &g.values, rows, cols, &h),
                );
                assert!(
                    e_gptq < 0.8 * e_rtn,
                    "{} act-order {act_order}: GPTQ {e_gptq:.3e} vs RTN {e_rtn:.3e}",
                    dtype.name()
                );
            }
        }
    }

    #[test]
    fn the_inverse_cholesky_factor_reproduces_the_inverse() {
        let n = 24;
        let h: Vec<f64> = hessian(n, 64, 3).iter().map(|&x| x as f64).collect();
        let u = upper_inverse_cholesky(h.clone(), n, 0.0).unwrap();
        // (UᵀU) H = I.
        for i in 0..n {
            for j in 0..n {
                let inv_ik = |k: usize| (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum::<f64>();
                let v: f64 = (0..n).map(|k| inv_ik(k) * h[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-6, "({i},{j}): {v}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let w = vec![0f32; 4 * 64];
        let h = vec![0f32; 64 * 64];
        assert!(matches!(
            gptq(DType::Q4G128, &w, 4, 64, &h, GptqOptions::default()),
            Err(GptqError::Shape { .. })
        ));
        assert_eq!(
            gptq(DType::F16, &w, 4, 64, &h, GptqOptions::default()),
            Err(GptqError::NotQuantized("f16"))
        );
        // An all-zero Hessian (inputs never seen) still quantizes.
        assert!(gptq(DType::Q4G64, &w, 4, 64, &h, GptqOptions::default()).is_ok());
    }
}
