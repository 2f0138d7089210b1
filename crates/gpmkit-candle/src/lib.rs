//! gpmkit's preference kernels as Candle [`CustomOp1`]/[`CustomOp2`]s on Candle tensors.
//!
//! Conventions (gpmkit DESIGN §1):
//!
//! ```text
//! s(i ≻ j) = Σ_l (v_i[2l] v_j[2l+1] − v_i[2l+1] v_j[2l])       (no gate: λ = 1)
//! ```
//!
//! What runs where:
//!
//! | pass | CPU tensors | CUDA tensors (cargo feature `cuda`) |
//! |---|---|---|
//! | forward | gpmkit's Rust CPU kernels (the Python package's CPU path), f32/f64 | gpmkit's committed PTX kernels (`src/cuda/kernels/*.ptx`, the Python package's CUDA path), launched through Candle's cudarc on the tensor's Candle stream; f32/f64/bf16/f16 |
//! | backward | Candle tensor ops (`Tensor::backward` works) | the same Candle tensor ops, run by Candle's own CUDA kernels |
//!
//! Inputs must be contiguous (any start offset on CPU; on CUDA the offset must keep the 2-element alignment
//! of the kernels' paired loads); other layouts are an error naming the argument.
//!
//! The `cuda` feature is off by default: it turns on `candle-core/cuda`, which needs nvcc and the CUDA
//! libraries (cuBLAS, cuRAND, cudart, a driver or stub) at build time and links them
//! (`scripts/candle_cuda_build.sh` builds it on a machine without a GPU; `rust-stack.md` §2 explains why
//! the Python wheel does not use it). Without the feature, CUDA tensors get Candle's "no cuda
//! implementation" error. The CUDA forward kernels reuse the root crate's launch planner
//! ([`gpmkit::cuda::plan`]), so grids, block size and argument order are the ones the torch path uses.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use gpmkit::loss::{self, PairLossGrads, Reduction};
use gpmkit::{score, Real};
use ndarray::{ArrayView2, ArrayView3, ArrayViewMut1, ArrayViewMut3};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

/// The contiguous data of one operand, as `F`.
fn data<'a, F: WithDType>(s: &'a CpuStorage, l: &Layout, arg: &str) -> Result<&'a [F]> {
    let all = s.as_slice::<F>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => bail!("{arg}: expected a contiguous tensor (call .contiguous()), got strides {:?}", l.stride()),
    }
}

fn kernel_err(e: gpmkit::GpmError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn float_dtype(s: &CpuStorage, arg: &str) -> Result<DType> {
    match s.dtype() {
        d @ (DType::F32 | DType::F64) => Ok(d),
        d => bail!("{arg}: expected an f32 or f64 tensor, got {d:?}"),
    }
}

/// `rot(v)[2l] = v[2l+1]`, `rot(v)[2l+1] = −v[2l]` over the last dimension: `⟨v_i, rot(v_j)⟩ = s(i ≻ j)`.
pub fn rotate(v: &Tensor) -> Result<Tensor> {
    let dims = v.dims().to_vec();
    let Some(&d) = dims.last() else {
        bail!("v: expected at least one dimension [..., 2k], got a scalar");
    };
    if d % 2 != 0 {
        bail!("v: expected an even last dimension 2k, got {d}");
    }
    let mut pairs = dims.clone();
    pairs.pop();
    pairs.push(d / 2);
    pairs.push(2);
    let p = v.reshape(pairs)?;
    let last = p.rank() - 1;
    let (x0, x1) = (p.narrow(last, 0, 1)?, p.narrow(last, 1, 1)?);
    Tensor::cat(&[&x1, &x0.neg()?], last)?.reshape(dims)
}

fn pair_width(l1: &Layout, l2: &Layout, a: &str, b: &str) -> Result<(usize, usize)> {
    let (s1, s2) = (l1.shape().dims(), l2.shape().dims());
    if s1.len() != 2 || s1[1] == 0 || s1[1] % 2 != 0 {
        bail!("{a}: expected shape [N, 2k] with k ≥ 1, got {s1:?}");
    }
    if s2 != s1 {
        bail!("{b}: expected shape {s1:?} (like {a}), got {s2:?}");
    }
    Ok((s1[0], s1[1]))
}

/// `(B, K, 2k)` of a `[B, K, 2k]` operand.
fn matrix_dims(l: &Layout) -> Result<(usize, usize, usize)> {
    let dims = l.shape().dims();
    if dims.len() != 3 || dims[2] == 0 || dims[2] % 2 != 0 {
        bail!("v: expected shape [B, K, 2k] with k ≥ 1, got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2]))
}

/// `s(v_i ≻ v_j)` for rows `v_i, v_j: [N, 2k]` → `[N]`.
pub struct PreferenceScore;

impl PreferenceScore {
    fn run<F: Real + WithDType>(s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<CpuStorage> {
        let (n, d) = pair_width(l1, l2, "v_i", "v_j")?;
        let vi = ArrayView2::from_shape((n, d), data::<F>(s1, l1, "v_i")?).expect("checked shape");
        let vj = ArrayView2::from_shape((n, d), data::<F>(s2, l2, "v_j")?).expect("checked shape");
        let mut out = vec![F::zero(); n];
        score::preference_score(vi, vj, None, ArrayViewMut1::from(&mut out[..])).map_err(kernel_err)?;
        Ok(F::to_cpu_storage_owned(out))
    }
}

impl CustomOp2 for PreferenceScore {
    fn name(&self) -> &'static str {
        "gpmkit-preference-score"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match float_dtype(s1, "v_i")? {
            DType::F32 => Self::run::<f32>(s1, l1, s2, l2)?,
            _ => Self::run::<f64>(s1, l1, s2, l2)?,
        };
        Ok((out, Shape::from(l1.shape().dims()[0])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::preference_score(s1, l1, s2, l2)
    }

    /// `∂s/∂v_i = rot(v_j)`, `∂s/∂v_j = −rot(v_i)`, each times the upstream gradient.
    fn bwd(&self, vi: &Tensor, vj: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.unsqueeze(1)?;
        Ok((Some(rotate(vj)?.broadcast_mul(&g)?), Some(rotate(vi)?.neg()?.broadcast_mul(&g)?)))
    }
}

/// All pairwise scores of K responses per prompt: `v: [B, K, 2k]` → `M: [B, K, K]`, `M[b,i,j] = s(v_i ≻ v_j)`.
pub struct PreferenceMatrix;

impl PreferenceMatrix {
    fn run<F: Real + WithDType>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, kk, d) = matrix_dims(l)?;
        let v = ArrayView3::from_shape((b, kk, d), data::<F>(s, l, "v")?).expect("checked shape");
        let mut out = vec![F::zero(); b * kk * kk];
        let view = ArrayViewMut3::from_shape((b, kk, kk), &mut out[..]).expect("sized above");
        score::preference_matrix(v, None, view).map_err(kernel_err)?;
        Ok((F::to_cpu_storage_owned(out), Shape::from((b, kk, kk))))
    }
}

impl CustomOp1 for PreferenceMatrix {
    fn name(&self) -> &'static str {
        "gpmkit-preference-matrix"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match float_dtype(s, "v")? {
            DType::F32 => Self::run::<f32>(s, l),
            _ => Self::run::<f64>(s, l),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::preference_matrix(s, l)
    }

    /// With `A = G − Gᵀ`: `∂/∂v = rot(A v)` (batched over prompts).
    fn bwd(&self, v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let a = (grad - grad.transpose(1, 2)?)?;
        Ok(Some(rotate(&a.contiguous()?.matmul(&v.contiguous()?)?)?))
    }
}

/// Mean GPM loss (paper Eq. A.1, hard labels, no margin or gate) over pairs `v_chosen, v_rejected: [N, 2k]`:
/// `mean_n softplus(−s_n/τ)`. The forward is gpmkit's fused kernel.
pub struct GpmLoss {
    pub tau: f64,
}

impl GpmLoss {
    fn run<F: Real + WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<CpuStorage> {
        let (n, d) = pair_width(l1, l2, "v_chosen", "v_rejected")?;
        let vc = ArrayView2::from_shape((n, d), data::<F>(s1, l1, "v_chosen")?).expect("checked shape");
        let vr = ArrayView2::from_shape((n, d), data::<F>(s2, l2, "v_rejected")?).expect("checked shape");
        let mut out = vec![F::zero(); 1];
        let grads = PairLossGrads::default();
        let lo = ArrayViewMut1::from(&mut out[..]);
        loss::gpm_loss(vc, vr, None, None, None, self.tau, Reduction::Mean, lo, grads).map_err(kernel_err)?;
        Ok(F::to_cpu_storage_owned(out))
    }
}

impl CustomOp2 for GpmLoss {
    fn name(&self) -> &'static str {
        "gpmkit-gpm-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match float_dtype(s1, "v_chosen")? {
            DType::F32 => self.run::<f32>(s1, l1, s2, l2)?,
            _ => self.run::<f64>(s1, l1, s2, l2)?,
        };
        Ok((out, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::gpm_loss(self.tau, s1, l1, s2, l2)
    }

    /// `∂ℓ/∂s_n = (σ(s_n/τ) − 1)/(τ N)`, chained through [`PreferenceScore`]'s gradient.
    fn bwd(&self, vc: &Tensor, vr: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = vc.dim(0)? as f64;
        let s = vc.apply_op2_no_bwd(vr, &PreferenceScore)?;
        let sig = ((s / -self.tau)?.exp()? + 1.0)?.recip()?;
        let coef = ((sig - 1.0)? / (self.tau * n))?.broadcast_mul(grad)?.unsqueeze(1)?;
        Ok((Some(rotate(vr)?.broadcast_mul(&coef)?), Some(rotate(vc)?.neg()?.broadcast_mul(&coef)?)))
    }
}

/// `s(v_i ≻ v_j)` per row (differentiable).
pub fn preference_score(v_i: &Tensor, v_j: &Tensor) -> Result<Tensor> {
    v_i.apply_op2(v_j, PreferenceScore)
}

/// `[B, K, 2k]` → `[B, K, K]` pairwise scores (differentiable).
pub fn preference_matrix(v: &Tensor) -> Result<Tensor> {
    v.apply_op1(PreferenceMatrix)
}

/// Mean GPM loss with temperature `tau` (differentiable).
pub fn gpm_loss(v_chosen: &Tensor, v_rejected: &Tensor, tau: f64) -> Result<Tensor> {
    if !(tau.is_finite() && tau > 0.0) {
        bail!("tau: expected a finite number > 0, got {tau}");
    }
    v_chosen.apply_op2(v_rejected, GpmLoss { tau })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn emb(n: usize, d: usize, seed: u64) -> Tensor {
        // deterministic pseudo-random values in [-1, 1]
        let vals: Vec<f64> = (0..n * d)
            .map(|i| {
                let x = (i as u64 + 1).wrapping_mul(6364136223846793005).wrapping_add(seed * 1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(vals, (n, d), &Device::Cpu).unwrap()
    }

    /// s via plain Candle ops: ⟨v_i, rot(v_j)⟩.
    fn naive_score(vi: &Tensor, vj: &Tensor) -> Tensor {
        (vi * rotate(vj).unwrap()).unwrap().sum(1).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn score_matches_the_definition_and_is_skew_symmetric() {
        // s([1,2],[3,4]) = 1·4 − 2·3 = −2
        let a = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[3f32, 4.0]], &Device::Cpu).unwrap();
        assert_eq!(preference_score(&a, &b).unwrap().to_vec1::<f32>().unwrap(), [-2.0]);
        let (x, y) = (emb(37, 6, 1), emb(37, 6, 2));
        let s = preference_score(&x, &y).unwrap();
        assert!(max_abs_diff(&s, &naive_score(&x, &y)) < 1e-12);
        assert!(max_abs_diff(&s, &preference_score(&y, &x).unwrap().neg().unwrap()) < 1e-15);
    }

    #[test]
    fn matrix_entries_are_pair_scores() {
        let v = emb(12, 4, 3).reshape((3, 4, 4)).unwrap();
        let m = preference_matrix(&v).unwrap();
        assert_eq!(m.dims(), [3, 4, 4]);
        for b in 0..3 {
            for i in 0..4 {
                for j in 0..4 {
                    let (vi, vj) =
                        (v.get(b).unwrap().narrow(0, i, 1).unwrap(), v.get(b).unwrap().narrow(0, j, 1).unwrap());
                    let want = naive_score(&vi, &vj).to_vec1::<f64>().unwrap()[0];
                    let got = m.get(b).unwrap().get(i).unwrap().get(j).unwrap().to_scalar::<f64>().unwrap();
                    assert!((got - want).abs() < 1e-12, "M[{b},{i},{j}] = {got}, expected {want}");
                }
            }
        }
    }

    #[test]
    fn gpm_loss_and_gradients_match_plain_candle_ops() {
        let tau = 0.3;
        let (x, y) = (Var::from_tensor(&emb(9, 6, 4)).unwrap(), Var::from_tensor(&emb(9, 6, 5)).unwrap());
        let loss = gpm_loss(x.as_tensor(), y.as_tensor(), tau).unwrap();
        // reference: mean softplus(−s/τ) = mean log(1 + exp(−s/τ)) with plain ops
        let s = naive_score(x.as_tensor(), y.as_tensor());
        let want = ((s / -tau).unwrap().exp().unwrap() + 1.0).unwrap().log().unwrap().mean_all().unwrap();
        assert!(max_abs_diff(&loss, &want) < 1e-12);
        let g = loss.backward().unwrap();
        let gw = want.backward().unwrap();
        for v in [&x, &y] {
            let (a, b) = (g.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap());
            assert!(max_abs_diff(a, b) < 1e-12);
        }
    }

    #[test]
    fn matrix_gradient_matches_plain_candle_ops() {
        let v = Var::from_tensor(&emb(10, 4, 6).reshape((2, 5, 4)).unwrap()).unwrap();
        let w = emb(50, 1, 7).reshape((2, 5, 5)).unwrap();
        let m = preference_matrix(v.as_tensor()).unwrap();
        let got = (m * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let naive = v.as_tensor().matmul(&rotate(v.as_tensor()).unwrap().transpose(1, 2).unwrap()).unwrap();
        let want = (naive * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(got.get(v.as_tensor()).unwrap(), want.get(v.as_tensor()).unwrap()) < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_argument() {
        let odd = emb(3, 3, 8);
        let e = preference_score(&odd, &odd).unwrap_err().to_string();
        assert!(e.contains("v_i: expected shape [N, 2k]"), "{e}");
        let e = preference_score(&emb(3, 4, 1), &emb(2, 4, 1)).unwrap_err().to_string();
        assert!(e.contains("v_j"), "{e}");
        let e = gpm_loss(&emb(3, 4, 1), &emb(3, 4, 1), 0.0).unwrap_err().to_string();
        assert!(e.contains("tau"), "{e}");
        let ints = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
        let e = preference_score(&ints, &ints).unwrap_err().to_string();
        assert!(e.contains("f32 or f64"), "{e}");
        let t = emb(4, 4, 1).t().unwrap();
        let e = preference_score(&t, &t).unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
        let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
        let e = rotate(&scalar).unwrap_err().to_string();
        assert!(e.contains("at least one dimension"), "{e}");
        let e = rotate(&emb(3, 3, 9)).unwrap_err().to_string();
        assert!(e.contains("even last dimension"), "{e}");
    }
}
