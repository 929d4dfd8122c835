//! Per-kernel micro-benchmarks: every available kernel on the matrix shapes of
//! SmolLM2-135M, exact (f32 activations) and int8-activation paths, reported as GB/s of
//! weights streamed (criterion's `Throughput::Bytes` = the matrix's bytes in the file).
//!
//! `cargo bench -p glint-runtime --bench kernels` (add `-- q8g32` to filter). Small
//! matrices stay in cache between iterations, so these are compute ceilings; the
//! 98304x576 int4 and 49152x576 int8 (the output head) cases stream from DRAM.
//!
//! `dram_read` is the yardstick for those: a plain read of 256 MiB by 1 and 2 threads
//! (`-- dram_read`), the memory-bandwidth floor `glint bench`'s decode GB/s is held to.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use glint_format::quant::quantize;
use glint_format::{DType, Matrix};
use glint_runtime::backend::cpu::kernels::{Kernel, QuantActs, int8_supported};
use std::hint::black_box;

use glint_format::quant::test_values as sample;

fn kernels(c: &mut Criterion) {
    let cases = [
        (DType::Q4G32A, 1536, 576, 1),
        (DType::Q4G32A, 576, 1536, 1),
        (DType::Q4G32A, 98304, 576, 1),
        (DType::Q8G32, 49152, 576, 1),
        (DType::Q4G32, 1536, 576, 1),
        (DType::Q4G32A, 1536, 576, 64),
        (DType::F16, 1536, 576, 1),
    ];
    for (dtype, rows, cols, n) in cases {
        let bytes = quantize(dtype, &sample(rows * cols, 9));
        let w = Matrix::from_bytes(dtype, rows, cols, &bytes).expect("matrix");
        let x = sample(n * cols, 4);
        let mut y = vec![0f32; n * rows];
        let mut g = c.benchmark_group(format!("{}_{rows}x{cols}_n{n}", dtype.name()));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.sample_size(20);
        for k in Kernel::all_available() {
            if k == Kernel::Scalar && rows * n > 2048 {
                continue; // minutes per sample; the scalar kernel is the reference, not a contender
            }
            g.bench_function(BenchmarkId::new("exact", k.name()), |b| {
                b.iter(|| k.matmul_rows(&w, black_box(&x), n, 0..rows, &mut y))
            });
            if int8_supported(dtype) {
                let mut a = QuantActs::new(n, cols).unwrap();
                a.quantize(Kernel::best(), &x, n, cols);
                g.bench_function(BenchmarkId::new("int8", k.name()), |b| {
                    b.iter(|| k.matmul_q8act_rows(&w, black_box(&a), 0..rows, &mut y))
                });
            }
        }
        g.finish();
    }
}

/// Streaming read bandwidth: `threads` threads each sum their half (or all) of a 256 MiB
/// buffer with four independent accumulators, so the loop is bound by memory, not adds.
fn dram_read(c: &mut Criterion) {
    // On 2 MiB pages where the OS has them, as the weights are (see `LoadedGlint`).
    let mut map = memmap2::MmapMut::map_anon(256 << 20).expect("256 MiB");
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    map.fill(1);
    // SAFETY: the mapping is page-aligned and its length a multiple of 8.
    let data: &[u64] = unsafe { std::slice::from_raw_parts(map.as_ptr().cast(), map.len() / 8) };
    let mut g = c.benchmark_group("dram_read");
    g.throughput(Throughput::Bytes((data.len() * 8) as u64));
    g.sample_size(20);
    for threads in [1usize, 2] {
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    let parts: Vec<_> = data
                        .chunks(data.len().div_ceil(threads))
                        .map(|part| {
                            s.spawn(move || {
                                let mut acc = [0u64; 4];
                                for c in part.chunks_exact(32) {
                                    for (j, a) in acc.iter_mut().enumerate() {
                                        for v in &c[8 * j..8 * j + 8] {
                                            *a = a.wrapping_add(*v);
                                        }
                                    }
                                }
                                acc.iter().fold(0u64, |x, y| x.wrapping_add(*y))
                            })
                        })
                        .collect();
                    black_box(parts.into_iter().map(|h| h.join().unwrap()).sum::<u64>())
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernels, dram_read);
criterion_main!(benches);
