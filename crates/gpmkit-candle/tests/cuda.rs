//! CUDA forward (gpmkit's PTX through Candle's cudarc) and backward (Candle's CUDA ops) against the CPU
//! CustomOps. Built only with `--features cuda`; every test prints `SKIP` and passes when no CUDA device
//! can be opened (a CPU box, or the libcuda stub the build links against), unless
//! `GPMKIT_REQUIRE_CUDA=1`, which turns a missing device into a failure (the GPU check sets it).
#![cfg(feature = "cuda")]

use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor, Var};
use gpmkit_candle::{gpm_loss, preference_matrix, preference_score};

/// CUDA device 0 (opened once and shared by the tests: one cuBLAS handle, PTX modules loaded once), or
/// `None` (with a printed reason) when there is none.
fn cuda() -> Option<Device> {
    static DEVICE: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
    let got = DEVICE.get_or_init(|| match std::panic::catch_unwind(|| Device::new_cuda(0)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Device::new_cuda(0) panicked".to_string()),
    });
    match got {
        Ok(d) => Some(d.clone()),
        Err(why) => {
            if std::env::var("GPMKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("GPMKIT_REQUIRE_CUDA=1 but no CUDA device: {why}");
            }
            println!("SKIP: no CUDA device ({})", why.lines().next().unwrap_or(""));
            None
        }
    }
}

/// Deterministic pseudo-random values in [-1, 1] (f64, CPU).
fn emb(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = (0..n)
        .map(|i| {
            let x =
                (i as u64 + 1).wrapping_mul(6364136223846793005).wrapping_add(seed.wrapping_mul(1442695040888963407));
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
}

/// Relative tolerance for comparing a CUDA result in `dt` with a CPU f64 result from the same inputs.
fn tol(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-12,
        DType::F32 => 2e-5,
        _ => 1.6e-2, // bf16 / f16 outputs: one rounding of an f32 accumulation (bf16 ulp 2^-8)
    }
}

/// Asserts `|got − want| ≤ tol · (1 + |want|)` element-wise (`got` on any device/dtype, `want` CPU f64).
fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let g = got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let g = g.to_vec1::<f64>().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: element {i}: got {a}, expected {b} (tol {tol})");
    }
}

/// `x` in dtype `dt` on `dev`, and the CPU f64 copy of exactly those (rounded) values.
fn put(x: &Tensor, dt: DType, dev: &Device) -> (Tensor, Tensor) {
    let rounded = x.to_dtype(dt).unwrap();
    (rounded.to_device(dev).unwrap(), rounded.to_dtype(DType::F64).unwrap())
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

#[test]
fn score_forward_matches_cpu() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    // N = 1, odd N, k = 1 and 3, k above a warp (40), and a long batch (grid-stride loop, grid > 1)
    for (n, k) in [(1, 1), (1, 3), (7, 1), (37, 3), (129, 40), (5001, 5)] {
        for dt in FLOATS {
            let (vi, vi64) = put(&emb(&[n, 2 * k], 1), dt, &dev);
            let (vj, vj64) = put(&emb(&[n, 2 * k], 2), dt, &dev);
            let got = preference_score(&vi, &vj)?;
            assert_eq!(got.dtype(), dt);
            assert!(got.device().is_cuda());
            let want = preference_score(&vi64, &vj64)?;
            assert_close(&got, &want, tol(dt), &format!("score n={n} k={k} {dt:?}"));
        }
    }
    Ok(())
}

#[test]
fn score_forward_respects_the_start_offset_and_refuses_strided_layouts() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    let (x, x64) = put(&emb(&[9, 6], 3), DType::F32, &dev);
    let (y, y64) = put(&emb(&[9, 6], 4), DType::F32, &dev);
    // rows 2..7: contiguous, start offset 12 elements
    let (xs, ys) = (x.narrow(0, 2, 5)?, y.narrow(0, 3, 5)?);
    let want = preference_score(&x64.narrow(0, 2, 5)?, &y64.narrow(0, 3, 5)?)?;
    assert_close(&preference_score(&xs, &ys)?, &want, tol(DType::F32), "offset rows");
    // a transposed view is not contiguous: a clear error, as on CPU
    let t = emb(&[4, 4], 5).to_dtype(DType::F32)?.to_device(&dev)?.t()?;
    let e = preference_score(&t, &t).unwrap_err().to_string();
    assert!(e.contains("v_i: expected a contiguous tensor"), "{e}");
    // mixed dtypes name the second operand
    let e = preference_score(&x, &y.to_dtype(DType::F64)?).unwrap_err().to_string();
    assert!(e.contains("v_j: expected dtype F32"), "{e}");
    // odd width: shape error naming the argument
    let odd = emb(&[3, 3], 6).to_dtype(DType::F32)?.to_device(&dev)?;
    let e = preference_score(&odd, &odd).unwrap_err().to_string();
    assert!(e.contains("v_i: expected shape [N, 2k]"), "{e}");
    Ok(())
}

#[test]
fn matrix_forward_matches_cpu() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    // the kernel picks a path by K: 4 entries per thread (K ≤ 32, K % 4 == 0), shared-memory tiles
    // (32 < K ≤ 64), one entry per thread otherwise; k above a warp (40) and many prompts (B = 64)
    let cases = [
        (1, 1, 1),
        (2, 3, 1),
        (3, 7, 5),
        (64, 9, 2),
        (1, 4, 3),
        (3, 16, 1),
        (2, 20, 40),
        (2, 33, 3),
        (1, 64, 5),
        (1, 64, 40),
        (2, 65, 2),
    ];
    for (b, kk, k) in cases {
        for dt in FLOATS {
            let (v, v64) = put(&emb(&[b, kk, 2 * k], 7), dt, &dev);
            let got = preference_matrix(&v)?;
            assert_eq!(got.dims(), [b, kk, kk]);
            let want = preference_matrix(&v64)?;
            assert_close(&got, &want, tol(dt), &format!("matrix b={b} K={kk} k={k} {dt:?}"));
        }
    }
    Ok(())
}

#[test]
fn gpm_loss_forward_matches_cpu_and_is_deterministic() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    // n = 5000 with k = 3 spans several blocks, so the ordered `loss_finish` sums several partials
    for (n, k) in [(1, 1), (1, 3), (7, 1), (33, 3), (5000, 3), (300, 40)] {
        for tau in [0.1, 1.0] {
            for dt in FLOATS {
                let (c, c64) = put(&emb(&[n, 2 * k], 8), dt, &dev);
                let (r, r64) = put(&emb(&[n, 2 * k], 9), dt, &dev);
                let got = gpm_loss(&c, &r, tau)?;
                assert_eq!(got.dims(), [] as [usize; 0]);
                let want = gpm_loss(&c64, &r64, tau)?;
                assert_close(&got, &want, tol(dt), &format!("gpm loss n={n} k={k} tau={tau} {dt:?}"));
                let again = gpm_loss(&c, &r, tau)?;
                let (a, b) =
                    (got.to_dtype(DType::F64)?.to_scalar::<f64>()?, again.to_dtype(DType::F64)?.to_scalar::<f64>()?);
                assert_eq!(a.to_bits(), b.to_bits(), "gpm loss n={n} {dt:?}: two runs differ");
            }
        }
    }
    Ok(())
}

/// Gradients of `f` w.r.t. `inputs` on CUDA (in `dt`) and on CPU (f64), compared.
fn check_grads(dev: &Device, dt: DType, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>, what: &str) {
    let run = |device: &Device, dtype: DType| -> Vec<Tensor> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|x| Var::from_tensor(&x.to_dtype(dtype).unwrap().to_device(device).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        let grads = out.backward().unwrap();
        vars.iter().map(|v| grads.get(v.as_tensor()).expect("a gradient for every input").clone()).collect()
    };
    // the CPU reference sees the same rounded inputs
    let rounded: Vec<Tensor> = inputs.iter().map(|x| x.to_dtype(dt).unwrap().to_dtype(DType::F64).unwrap()).collect();
    let got = run(dev, dt);
    let want = {
        let vars: Vec<Var> = rounded.iter().map(|x| Var::from_tensor(x).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = f(&ts).unwrap().backward().unwrap();
        vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect::<Vec<_>>()
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g.device().is_cuda(), "{what}: gradient {i} left the device");
        // bf16/f16 gradients go through several roundings in Candle's own ops
        let t = if matches!(dt, DType::BF16 | DType::F16) { 5e-2 } else { tol(dt) };
        assert_close(g, w, t, &format!("{what} {dt:?}: grad of input {i}"));
    }
}

#[test]
fn backward_on_cuda_matches_cpu() -> Result<()> {
    let Some(dev) = cuda() else { return Ok(()) };
    for dt in [DType::F64, DType::F32, DType::BF16] {
        for (n, k) in [(1, 1), (7, 3), (257, 5)] {
            let (c, r) = (emb(&[n, 2 * k], 10), emb(&[n, 2 * k], 11));
            let w = emb(&[n], 12);
            check_grads(
                &dev,
                dt,
                &[c.clone(), r.clone()],
                move |x| {
                    let w = w.to_dtype(x[0].dtype())?.to_device(x[0].device())?;
                    (preference_score(&x[0], &x[1])? * w)?.sum_all()
                },
                &format!("score n={n} k={k}"),
            );
            check_grads(&dev, dt, &[c, r], |x| gpm_loss(&x[0], &x[1], 0.3), &format!("gpm loss n={n} k={k}"));
        }
        for (b, kk, k) in [(1, 1, 1), (2, 5, 3)] {
            let wm = emb(&[b, kk, kk], 13);
            check_grads(
                &dev,
                dt,
                &[emb(&[b, kk, 2 * k], 14)],
                move |x| {
                    let w = wm.to_dtype(x[0].dtype())?.to_device(x[0].device())?;
                    (preference_matrix(&x[0])? * w)?.sum_all()
                },
                &format!("matrix b={b} K={kk} k={k}"),
            );
        }
    }
    Ok(())
}
