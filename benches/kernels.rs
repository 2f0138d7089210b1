//! Criterion benchmarks of the Rust kernels alone (no Python): `cargo bench --no-default-features`.
//!
//! The Python-level comparison against PyTorch lives in `benches/bench_kernels.py` (`make bench`).

use _core::loss::{gpm_loss, PairLossGrads, Reduction};
use _core::score::{preference_matrix, preference_matrix_backward, preference_score, win_score, win_score_backward};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2, Array3};

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pairs(c: &mut Criterion) {
    let (d, k) = (8, 4);
    let mut g = c.benchmark_group("pairs");
    for &n in &[4096usize, 65536, 262144] {
        let vc = Array2::from_shape_vec((n, d), data(n * d, 1)).unwrap();
        let vr = Array2::from_shape_vec((n, d), data(n * d, 2)).unwrap();
        let gate = Array2::from_shape_vec((n, k), data(n * k, 3)).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        let mut s = Array1::zeros(n);
        g.bench_with_input(BenchmarkId::new("preference_score", n), &n, |b, _| {
            b.iter(|| preference_score(vc.view(), vr.view(), Some(gate.view()), s.view_mut()).unwrap())
        });
        let (mut gc, mut gr, mut gg) = (Array2::zeros((n, d)), Array2::zeros((n, d)), Array2::zeros((n, k)));
        let mut loss = Array1::zeros(1);
        g.bench_with_input(BenchmarkId::new("gpm_loss_fwd_bwd", n), &n, |b, _| {
            b.iter(|| {
                let grads = PairLossGrads {
                    chosen: Some(gc.view_mut()),
                    rejected: Some(gr.view_mut()),
                    gate: Some(gg.view_mut()),
                    ..Default::default()
                };
                gpm_loss(
                    vc.view(),
                    vr.view(),
                    Some(gate.view()),
                    None,
                    None,
                    0.1,
                    Reduction::Mean,
                    loss.view_mut(),
                    grads,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

fn populations(c: &mut Criterion) {
    let (p, kk, d, k) = (256, 64, 8, 4);
    let v = Array3::from_shape_vec((p, kk, d), data(p * kk * d, 4)).unwrap();
    let gate = Array2::from_shape_vec((p, k), data(p * k, 5)).unwrap();
    let gm = Array3::from_shape_vec((p, kk, kk), data(p * kk * kk, 6)).unwrap();
    let gw = Array2::from_shape_vec((p, kk), data(p * kk, 7)).unwrap();
    let mut g = c.benchmark_group("populations_P256_K64_d8");
    let (mut m, mut gv, mut gg) = (Array3::zeros((p, kk, kk)), Array3::zeros((p, kk, d)), Array2::zeros((p, k)));
    g.bench_function("preference_matrix", |b| {
        b.iter(|| preference_matrix(v.view(), Some(gate.view()), m.view_mut()).unwrap())
    });
    g.bench_function("preference_matrix_backward", |b| {
        b.iter(|| {
            preference_matrix_backward(gm.view(), v.view(), Some(gate.view()), Some(gv.view_mut()), Some(gg.view_mut()))
                .unwrap()
        })
    });
    let mut w = Array2::zeros((p, kk));
    g.bench_function("win_score", |b| b.iter(|| win_score(v.view(), None, Some(gate.view()), w.view_mut()).unwrap()));
    g.bench_function("win_score_backward", |b| {
        b.iter(|| {
            win_score_backward(
                gw.view(),
                v.view(),
                None,
                Some(gate.view()),
                Some(gv.view_mut()),
                None,
                Some(gg.view_mut()),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, pairs, populations);
criterion_main!(benches);
