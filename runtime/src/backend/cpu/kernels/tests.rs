use super::*;
use glint_format::quant::{dequantize_row, quantize};

const DTYPES: [DType; 7] = DType::ALL;

/// Deterministic pseudo-random values in [-1, 1).
use glint_format::quant::test_values as sample;

/// Random weights with a different scale and offset per row (so the int4 minimums and
/// the scales vary a lot), quantized to `dtype`.
fn weights(dtype: DType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let mut data = sample(rows * cols, seed);
    for (r, row) in data.chunks_exact_mut(cols.max(1)).enumerate() {
        let scale = [0.01f32, 0.3, 1.0, 7.0, 0.05][r % 5];
        let offset = [0.0f32, 0.5, -0.2, 0.0, 2.0][r % 5] * scale;
        row.iter_mut().for_each(|v| *v = *v * scale + offset);
    }
    quantize(dtype, &data)
}

/// `dequantize_row` + f64 dot: `(value, sum |w x|)` per row.
fn reference(w: &Matrix<'_>, x: &[f32]) -> Vec<(f64, f64)> {
    let mut row = vec![0f32; w.cols];
    (0..w.rows)
        .map(|r| {
            dequantize_row(w, r, &mut row);
            row.iter().zip(x).fold((0.0, 0.0), |(s, a), (&w, &x)| {
                let p = w as f64 * x as f64;
                (s + p, a + p.abs())
            })
        })
        .collect()
}

fn close(got: f32, want: f64, scale: f64) -> bool {
    (got as f64 - want).abs() <= 1e-5 * scale + 1e-30
}

fn shapes(dtype: DType) -> impl Iterator<Item = (usize, usize)> {
    let group = dtype.group().unwrap_or(1);
    let cols: &[usize] = if dtype.is_quantized() {
        &[32, 64, 128, 576, 640, 1536]
    } else {
        &[1, 5, 16, 32, 37, 100, 576, 1536]
    };
    cols.iter()
        .filter(move |&&c| c % group == 0)
        .flat_map(|&c| [1usize, 7, 33].into_iter().map(move |r| (r, c)))
}

#[test]
fn kernel_names_round_trip() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::from_name(k.name()), Some(k));
    }
    assert_eq!(Kernel::from_name("nope"), None);
    assert!(Kernel::best().available());
    assert!(Kernel::all_available().any(|k| k == Kernel::Scalar));
}

#[test]
fn matvec_matches_dequantize_then_dot() {
    for dtype in DTYPES {
        for (rows, cols) in shapes(dtype) {
            let bytes = weights(dtype, rows, cols, (rows * 31 + cols) as u32);
            let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
            let x = sample(cols, 77 + cols as u32);
            let want = reference(&w, &x);
            let mut scalar = vec![0f32; rows];
            Kernel::Scalar.matvec_rows(&w, &x, 0..rows, &mut scalar);
            for k in Kernel::all_available() {
                let mut y = vec![f32::NAN; rows];
                k.matvec_rows(&w, &x, 0..rows, &mut y);
                for r in 0..rows {
                    let (v, s) = want[r];
                    assert!(
                        close(y[r], v, s),
                        "{} {} {rows}x{cols} row {r}: {} vs {v}",
                        k.name(),
                        dtype.name(),
                        y[r]
                    );
                    assert!(
                        close(y[r], scalar[r] as f64, s),
                        "{} {} {rows}x{cols} row {r}: {} vs scalar {}",
                        k.name(),
                        dtype.name(),
                        y[r],
                        scalar[r]
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_matches_matvec() {
    for dtype in DTYPES {
        for (rows, cols) in [(7, 64), (33, 576), (5, 1536)] {
            if cols % dtype.group().unwrap_or(1) != 0 {
                continue;
            }
            let bytes = weights(dtype, rows, cols, 5 + rows as u32);
            let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
            for n in [1, 3, 8, 37] {
                let x = sample(n * cols, 99 + n as u32);
                let want: Vec<Vec<(f64, f64)>> =
                    x.chunks_exact(cols).map(|xi| reference(&w, xi)).collect();
                for k in Kernel::all_available() {
                    let mut y = vec![f32::NAN; n * rows];
                    k.matmul_rows(&w, &x, n, 0..rows, &mut y);
                    for (i, xi) in x.chunks_exact(cols).enumerate() {
                        let mut yv = vec![0f32; rows];
                        k.matvec_rows(&w, xi, 0..rows, &mut yv);
                        for r in 0..rows {
                            let (v, s) = want[i][r];
                            let got = y[i * rows + r];
                            let ctx = format!(
                                "{} {} {rows}x{cols} n={n} i={i} r={r}",
                                k.name(),
                                dtype.name()
                            );
                            assert!(close(got, v, s), "{ctx}: {got} vs {v}");
                            assert!(
                                close(got, yv[r] as f64, s),
                                "{ctx}: {got} vs matvec {}",
                                yv[r]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn row_ranges_are_bit_identical() {
    for dtype in DTYPES {
        let (rows, cols) = (33, if dtype == DType::Q4G128 { 128 } else { 576 });
        let bytes = weights(dtype, rows, cols, 3);
        let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
        let n = 5;
        let x = sample(n * cols, 11);
        let splits: &[&[usize]] = &[
            &[0, 33],
            &[0, 1, 33],
            &[0, 3, 7, 8, 20, 33],
            &[0, 13, 13, 32, 33],
        ];
        for k in Kernel::all_available() {
            let mut full = vec![0f32; rows];
            k.matvec_rows(&w, &x[..cols], 0..rows, &mut full);
            let mut full_mm = vec![0f32; n * rows];
            k.matmul_rows(&w, &x, n, 0..rows, &mut full_mm);
            for split in splits {
                let mut y = vec![f32::NAN; rows];
                let mut y_mm = vec![f32::NAN; n * rows];
                for pair in split.windows(2) {
                    let range = pair[0]..pair[1];
                    k.matvec_rows(&w, &x[..cols], range.clone(), &mut y[range.clone()]);
                    // SAFETY: `y_mm` is [n][rows] and this call writes only the range.
                    unsafe { k.matmul_rows_raw(&w, &x, n, range.clone(), y_mm.as_mut_ptr(), rows) };
                    let mut packed = vec![f32::NAN; n * range.len()];
                    k.matmul_rows(&w, &x, n, range.clone(), &mut packed);
                    for i in 0..n {
                        let a = &packed[i * range.len()..][..range.len()];
                        let b = &full_mm[i * rows..][range.clone()];
                        assert!(
                            a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} {}",
                            k.name(),
                            dtype.name()
                        );
                    }
                }
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same(&y, &full),
                    "{} {} split {split:?}",
                    k.name(),
                    dtype.name()
                );
                assert!(
                    same(&y_mm, &full_mm),
                    "{} {} split {split:?} (matmul)",
                    k.name(),
                    dtype.name()
                );
            }
        }
    }
}

#[test]
fn row_ranges_and_raw_writes_match_the_whole_product() {
    let (rows, cols, n) = (9, 64, 3);
    let bytes = weights(DType::Q4G32A, rows, cols, 1);
    let w = Matrix::from_bytes(DType::Q4G32A, rows, cols, &bytes).unwrap();
    let x = sample(n * cols, 2);
    for k in Kernel::all_available() {
        let mut y = vec![0f32; n * rows];
        k.matmul_rows(&w, &x, n, 0..rows, &mut y);
        let mut yv = vec![0f32; rows];
        k.matvec_rows(&w, &x[..cols], 0..rows, &mut yv);
        let mut part = vec![0f32; 4];
        k.matvec_rows(&w, &x[..cols], 2..6, &mut part);
        assert_eq!(&yv[2..6], &part[..]);
        let mut packed = vec![0f32; n * 4];
        k.matmul_rows(&w, &x, n, 5..9, &mut packed);
        for i in 0..n {
            assert_eq!(&packed[i * 4..][..4], &y[i * rows + 5..][..4]);
        }
        let mut raw = vec![0f32; n * rows];
        // SAFETY: `raw` is [n][rows].
        unsafe { k.matmul_rows_raw(&w, &x, n, 0..rows, raw.as_mut_ptr(), rows) };
        assert_eq!(raw, y);
    }
}

#[test]
fn empty_ranges_and_batches_write_nothing() {
    let bytes = weights(DType::Q8G32, 4, 32, 1);
    let w = Matrix::from_bytes(DType::Q8G32, 4, 32, &bytes).unwrap();
    for k in Kernel::all_available() {
        k.matvec_rows(&w, &[0.5; 32], 2..2, &mut []);
        k.matmul_rows(&w, &[], 0, 0..4, &mut []);
    }
}

#[test]
#[should_panic(expected = "x must be")]
fn wrong_activation_length_panics() {
    let bytes = weights(DType::Q4G32A, 2, 32, 1);
    let w = Matrix::from_bytes(DType::Q4G32A, 2, 32, &bytes).unwrap();
    Kernel::best().matvec_rows(&w, &[0.0; 31], 0..2, &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "plane too short")]
fn short_planes_panic() {
    let bytes = weights(DType::Q4G32A, 2, 32, 1);
    let mut w = Matrix::from_bytes(DType::Q4G32A, 2, 32, &bytes).unwrap();
    w.mins = &w.mins[..2];
    Kernel::best().matvec_rows(&w, &[0.0; 32], 0..2, &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "row range")]
fn out_of_range_rows_panic() {
    let bytes = weights(DType::F32, 2, 8, 1);
    let w = Matrix::from_bytes(DType::F32, 2, 8, &bytes).unwrap();
    Kernel::best().matvec_rows(&w, &[0.0; 8], 1..3, &mut [0.0; 2]);
}

/// Weight-streaming throughput, single-threaded. Run with
/// `cargo test --release -p glint-runtime --lib kernels::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn throughput() {
    use std::time::Instant;
    let cases = [
        (DType::Q4G32A, 1536, 576, 1),
        (DType::Q4G32A, 576, 1536, 1),
        (DType::Q4G32A, 1536, 576, 8),
        (DType::Q4G32A, 1536, 576, 64),
        (DType::Q4G32, 1536, 576, 1),
        (DType::Q4G32A, 98304, 576, 1),
        (DType::Q4G32A, 2048, 2048, 1),
        (DType::Q4G32A, 2048, 8192, 1),
        // The other sub-1B widths (Q4_0 releases): SmolLM2-360M, Qwen2.5-0.5B.
        (DType::Q4G32, 2560, 960, 1),
        (DType::Q4G32, 960, 2560, 1),
        (DType::Q4G32, 4864, 896, 1),
        (DType::Q4G32, 896, 4864, 1),
        (DType::Q8G32, 1536, 576, 1),
        (DType::Q8G32, 49152, 576, 1),
        // Llama-3.2-1B's tied head: 128256 x 2048 int8, 279 MB.
        (DType::Q8G32, 128256, 2048, 1),
        (DType::F16, 1536, 576, 1),
        (DType::F32, 1536, 576, 1),
    ];
    // `GLINT_BENCH=q4g32a` (for example) keeps only the cases whose dtype name matches.
    let only = std::env::var("GLINT_BENCH").ok();
    for (dtype, rows, cols, n) in cases {
        if only.as_deref().is_some_and(|o| o != dtype.name()) {
            continue;
        }
        let bytes = weights(dtype, rows, cols, 9);
        let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
        let x = sample(n * cols, 4);
        let mut y = vec![0f32; n * rows];
        for k in Kernel::all_available() {
            // Best of many short windows: robust to other processes sharing the cores.
            let iters = (5_000_000 / (bytes.len() * n)).clamp(1, 1000);
            k.matmul_rows(&w, &x, n, 0..rows, &mut y);
            let mut best = f64::INFINITY;
            for _ in 0..60 {
                let t = Instant::now();
                for _ in 0..iters {
                    k.matmul_rows(&w, std::hint::black_box(&x), n, 0..rows, &mut y);
                }
                best = best.min(t.elapsed().as_secs_f64() / iters as f64);
            }
            let gbs = bytes.len() as f64 / best / 1e9;
            let gflops = 2.0 * (rows * cols * n) as f64 / best / 1e9;
            println!(
                "{:7} {:6} {rows:5}x{cols:<5} n={n:<3} {:9.1} us  {gbs:7.2} GB/s weights  {gflops:7.2} GFLOP/s",
                k.name(),
                dtype.name(),
                best * 1e6
            );
            if int8_supported(dtype) {
                let mut a = QuantActs::new(n, cols).unwrap();
                a.quantize(Kernel::best(), &x, n, cols);
                let mut best = f64::INFINITY;
                for _ in 0..60 {
                    let t = Instant::now();
                    for _ in 0..iters {
                        k.matmul_q8act_rows(&w, std::hint::black_box(&a), 0..rows, &mut y);
                    }
                    best = best.min(t.elapsed().as_secs_f64() / iters as f64);
                }
                let gbs = bytes.len() as f64 / best / 1e9;
                println!(
                    "{:7} {:6} {rows:5}x{cols:<5} n={n:<3} {:9.1} us  {gbs:7.2} GB/s weights  (int8 act)",
                    k.name(),
                    dtype.name(),
                    best * 1e6
                );
            }
        }
    }
}

/// The int8-activation math in f64 from first principles (dequantized weights, the
/// quantized activations rebuilt as `d * q`): `(value, sum |terms|)` per (act, row).
fn reference_q8act(w: &Matrix<'_>, x: &[f32], n: usize) -> Vec<(f64, f64)> {
    let cols = w.cols;
    let mut row = vec![0f32; cols];
    let mut xq = vec![0f64; n * cols];
    for (xr, qr) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(cols)) {
        for (xb, qb) in xr.chunks_exact(BLOCK).zip(qr.chunks_exact_mut(BLOCK)) {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = d as f64 * (v * id).round_ties_even() as f64;
            }
        }
    }
    let mut out = vec![(0.0, 0.0); n * w.rows];
    for r in 0..w.rows {
        dequantize_row(w, r, &mut row);
        for i in 0..n {
            let (mut s, mut a) = (0f64, 0f64);
            for (&wv, &xv) in row.iter().zip(&xq[i * cols..(i + 1) * cols]) {
                s += wv as f64 * xv;
                a += (wv as f64 * xv).abs();
            }
            // The kernels compute `dw dx P + m s` per block: the cancellation between the
            // two terms is part of the rounding budget.
            if w.dtype != DType::Q8G32 {
                let group = w.dtype.group().unwrap();
                let f16 = |p: &[u8], j: usize| {
                    half::f16::from_le_bytes([p[2 * j], p[2 * j + 1]]).to_f64()
                };
                for b in 0..cols / BLOCK {
                    let blk = r * cols / BLOCK + b;
                    let m = if w.dtype == DType::Q4G32A {
                        f16(w.mins, blk)
                    } else {
                        8.0 * f16(w.scales, blk * BLOCK / group)
                    };
                    let sx: f64 = xq[i * cols + b * BLOCK..][..BLOCK].iter().sum();
                    a += 2.0 * (m * sx).abs();
                }
            }
            out[i * w.rows + r] = (s, a);
        }
    }
    out
}

#[test]
fn int8_activation_kernels_match_the_scalar_reference() {
    for dtype in DTYPES.into_iter().filter(|d| int8_supported(*d)) {
        for (rows, cols) in shapes(dtype) {
            let bytes = weights(dtype, rows, cols, (rows * 7 + cols) as u32);
            let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
            // 12 and more rows take the tile-order kernel on AVX-512 (16-row tiles, the
            // last one padded).
            for n in [1usize, 2, 4, 5, 9, 12, 16, 17, 33] {
                let mut x = sample(n * cols, 11 + (n * cols) as u32);
                // A zero block (scale 0) and a large outlier.
                x[..BLOCK.min(cols)].fill(0.0);
                x[cols - 1] = 40.0;
                let mut a = QuantActs::new(40, 2048).unwrap();
                // A bigger batch first: the padding of the last tile must be cleared.
                a.quantize(Kernel::best(), &sample(40 * cols, 5), 40, cols);
                a.quantize(Kernel::best(), &x, n, cols);
                let want = reference_q8act(&w, &x, n);
                let mut scalar = vec![f32::NAN; n * rows];
                Kernel::Scalar.matmul_q8act_rows(&w, &a, 0..rows, &mut scalar);
                for k in Kernel::all_available() {
                    let mut y = vec![f32::NAN; n * rows];
                    k.matmul_q8act_rows(&w, &a, 0..rows, &mut y);
                    for j in 0..n * rows {
                        let (v, s) = want[j];
                        let ctx = format!("{} {} {rows}x{cols} n={n} #{j}", k.name(), dtype.name());
                        // Scales are f32 products here and f64 in the reference: 1e-5.
                        assert!(close(y[j], v, s), "{ctx}: {} vs exact {v}", y[j]);
                        assert!(
                            close(y[j], scalar[j] as f64, s),
                            "{ctx}: {} vs scalar {}",
                            y[j],
                            scalar[j]
                        );
                    }
                    // Row ranges write only their rows, the same values.
                    if rows > 4 {
                        let r = 3..rows - 1;
                        let mut part = vec![f32::NAN; n * r.len()];
                        k.matmul_q8act_rows(&w, &a, r.clone(), &mut part);
                        for i in 0..n {
                            for (j, rr) in r.clone().enumerate() {
                                assert_eq!(
                                    part[i * r.len() + j].to_bits(),
                                    y[i * rows + rr].to_bits()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The one-row wide int4 kernels (every width of the sub-1B models: SmolLM2's 1536,
/// SmolLM2-360M's 960 and 2560, Qwen2.5-0.5B's 896 and 4864, Llama-3.2-1B's 2048 and
/// 8192, plus last chunks of 1, 2 and 3 blocks: 32, 64, 96, 160; asymmetric and
/// symmetric; 8-row tiles, the last one repeating its last row) against the scalar
/// reference, for every tile remainder and for row ranges that start mid-tile.
#[test]
fn int8_one_row_wide_rows_match_the_scalar_reference() {
    for (dtype, cols, rows) in [DType::Q4G32A, DType::Q4G32]
        .into_iter()
        .flat_map(|d| {
            [32, 64, 96, 160, 512, 896, 960, 1536, 2048, 2560, 4864, 8192].map(move |c| (d, c))
        })
        .flat_map(|(d, c)| (1..=17).chain([24, 31]).map(move |r| (d, c, r)))
    {
        let bytes = weights(dtype, rows, cols, (rows * 13 + cols) as u32);
        let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
        let mut x = sample(cols, 3 + rows as u32);
        x[cols - 1] = -25.0;
        let mut a = QuantActs::new(1, cols).unwrap();
        a.quantize(Kernel::best(), &x, 1, cols);
        let want = reference_q8act(&w, &x, 1);
        let mut scalar = vec![f32::NAN; rows];
        Kernel::Scalar.matmul_q8act_rows(&w, &a, 0..rows, &mut scalar);
        for k in Kernel::all_available() {
            for start in [0, rows / 3, rows - 1] {
                let mut y = vec![f32::NAN; rows - start];
                k.matmul_q8act_rows(&w, &a, start..rows, &mut y);
                for (j, got) in y.iter().enumerate() {
                    let (v, sc) = want[start + j];
                    let ctx = format!(
                        "{} {} {rows}x{cols} from {start} #{j}",
                        k.name(),
                        dtype.name()
                    );
                    assert!(close(*got, v, sc), "{ctx}: {got} vs exact {v}");
                    let s = scalar[start + j] as f64;
                    assert!(close(*got, s, sc), "{ctx}: {got} vs scalar {s}");
                }
            }
        }
    }
}

#[test]
fn int8_activation_path_is_close_to_the_exact_path() {
    // The activation rounding costs well under 1% of sum |w x| on random data.
    let (rows, cols) = (64, 576);
    for dtype in [DType::Q4G32A, DType::Q8G32] {
        let bytes = weights(dtype, rows, cols, 3);
        let w = Matrix::from_bytes(dtype, rows, cols, &bytes).unwrap();
        let x = sample(cols, 5);
        let want = reference(&w, &x);
        let mut a = QuantActs::new(1, cols).unwrap();
        a.quantize(Kernel::best(), &x, 1, cols);
        let mut y = vec![0f32; rows];
        Kernel::best().matmul_q8act_rows(&w, &a, 0..rows, &mut y);
        for r in 0..rows {
            let (v, s) = want[r];
            assert!(
                (y[r] as f64 - v).abs() < 5e-3 * s,
                "{} row {r}: {} vs {v}",
                dtype.name(),
                y[r]
            );
        }
    }
}

#[test]
#[should_panic(expected = "no int8-activation kernel")]
fn int8_activations_refuse_float_weights() {
    let bytes = weights(DType::F16, 2, 32, 1);
    let w = Matrix::from_bytes(DType::F16, 2, 32, &bytes).unwrap();
    let mut a = QuantActs::new(1, 32).unwrap();
    a.quantize(Kernel::best(), &[0.5; 32], 1, 32);
    Kernel::best().matmul_q8act_rows(&w, &a, 0..2, &mut [0.0; 2]);
}

/// Every kernel's row quantizer (scalar, AVX-512 or NEON, as `QuantActs::quantize`
/// picks it) gives the scalar bits in every plane: zero blocks, outliers, exact ties at
/// .5 and tiny blocks, one row (decode) and three (the tiled layout).
#[test]
fn quantize_is_bit_identical_on_every_kernel() {
    for cols in [32usize, 64, 96, 160, 576, 1536] {
        for n in [1usize, 3] {
            let mut x: Vec<f32> = sample(n * cols, cols as u32 + n as u32)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            x[..BLOCK].fill(0.0);
            x[cols - 1] = 40.0;
            x[n * cols - 2] = -1e4;
            if cols >= 96 {
                // Exact ties after scaling: amax 127 gives `1 / d` = 1.
                x[32..40].copy_from_slice(&[127.0, 2.5, -3.5, 0.5, -0.5, 1.5, -126.5, 3.0]);
                x[64..96].iter_mut().for_each(|v| *v *= 1e-20);
            }
            let planes = |a: &QuantActs| {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                (
                    a.nat.clone(),
                    a.corr.clone(),
                    a.til.clone(),
                    [
                        bits(&a.d),
                        bits(&a.s),
                        bits(&a.d4),
                        bits(&a.td),
                        bits(&a.ts),
                    ],
                )
            };
            let mut want = QuantActs::new(n, cols).unwrap();
            want.quantize(Kernel::Scalar, &x, n, cols);
            for kernel in Kernel::all_available() {
                let mut got = QuantActs::new(n, cols).unwrap();
                got.quantize(kernel, &x, n, cols);
                assert!(
                    planes(&got) == planes(&want),
                    "{} cols {cols} n {n}",
                    kernel.name()
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn simd_quantize_is_bit_identical_to_scalar() {
    if !(Kernel::Avx512.available()
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni"))
    {
        return eprintln!("skipped: no AVX-512 VNNI");
    }
    for cols in [32usize, 64, 576, 1536] {
        let mut x: Vec<f32> = sample(cols, cols as u32).iter().map(|v| v * 3.0).collect();
        x[..BLOCK].fill(0.0);
        x[cols - 1] = 40.0;
        // Exact ties at .5 after scaling: amax 127 gives id 1.
        if cols >= 64 {
            x[32] = 127.0;
            x[33] = 2.5;
            x[34] = -3.5;
        }
        let nb = cols / BLOCK;
        let (mut q0, mut d0, mut s0, mut c0) = (
            vec![0i8; cols],
            vec![0f32; nb],
            vec![0f32; nb],
            vec![0i32; cols / 4],
        );
        let (mut q1, mut d1, mut s1, mut c1) = (q0.clone(), d0.clone(), s0.clone(), c0.clone());
        int8::quantize_row_scalar(&x, &mut q0, &mut d0, &mut s0, &mut c0);
        // SAFETY: features checked above; shapes match.
        unsafe { avx512::quantize_row(&x, &mut q1, &mut d1, &mut s1, &mut c1) };
        assert_eq!(q0, q1);
        assert_eq!(c0, c1);
        assert!(d0.iter().zip(&d1).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(s0.iter().zip(&s1).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn horizontal_sum_trees_match_plain_sums() {
    use core::arch::x86_64::{__m512, _mm512_loadu_ps};
    if !Kernel::Avx512.available() {
        return eprintln!("skipped: no AVX-512");
    }
    fn check<const R: usize>() {
        let v: Vec<f32> = (0..16 * R).map(|i| (i * i % 97) as f32 - 40.0).collect();
        // SAFETY: AVX-512F checked by the caller; 16 floats per vector.
        let acc: [__m512; R] =
            core::array::from_fn(|k| unsafe { _mm512_loadu_ps(v[16 * k..].as_ptr()) });
        // SAFETY: as above.
        let got = unsafe { avx512::hsum(&acc) };
        for (k, g) in got.iter().enumerate() {
            assert_eq!(
                *g,
                v[16 * k..16 * k + 16].iter().sum::<f32>(),
                "R={R} row {k}"
            );
        }
    }
    check::<3>();
    check::<4>();
    check::<8>();
}

/// On aarch64, NEON is always there and the dotprod kernel exactly when the CPU has
/// `sdot`, so the tests above ran both under `qemu-aarch64 -cpu max` and only the base
/// one under `-cpu cortex-a53` (the list is printed for the CI log).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kernels_follow_the_cpu_features() {
    assert!(Kernel::Neon.available());
    assert_eq!(
        Kernel::NeonDot.available(),
        std::arch::is_aarch64_feature_detected!("dotprod")
    );
    let names: Vec<_> = Kernel::all_available().map(|k| k.name()).collect();
    eprintln!("kernels tested: {names:?}");
    assert!(Kernel::detected_features().contains(&"neon"));
}
