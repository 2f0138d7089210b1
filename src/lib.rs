//! gpmkit core: skew-symmetric preference scores and the GPM / BT / GPO / SPPO losses.
//!
//! Conventions (DESIGN §1). A response embedding `v ∈ R^{2k}`, an optional per-block gate `λ ∈ R^k`:
//!
//! ```text
//! s(i ≻ j) = Σ_l λ_l · (v_i[2l] · v_j[2l+1] − v_i[2l+1] · v_j[2l])
//! ```
//!
//! Every kernel here is a pure function over ndarray views, generic over `f32`/`f64`, with a forward and
//! a backward. Outputs are caller-allocated. Parallel work is cut into fixed chunks and reduced in order,
//! so results are bit-identical for any number of threads ([`parallel`]). The PyO3 bindings live in
//! `src/python/` behind the default `python` feature and contain no math.

pub mod batch;
pub mod cuda;
pub mod error;
pub mod fastmath;
pub mod game;
pub mod loss;
pub mod parallel;
pub mod score;

#[cfg(feature = "python")]
mod python;

pub use error::{GpmError, Result};

/// The floating-point types the kernels are instantiated for.
pub trait Real: num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::fmt::Debug + 'static {
    /// `e^{−|x|}`, in `(0, 1]`.
    fn exp_neg_abs(self) -> Self;
    /// `ln(1 + e)` for `e ∈ [0, 1]`.
    fn ln_1p_unit(self) -> Self;
}

/// `f32`: vectorisable approximations within 2 ulp ([`fastmath`]).
impl Real for f32 {
    #[inline(always)]
    fn exp_neg_abs(self) -> Self {
        fastmath::exp_neg_abs_f32(self)
    }
    #[inline(always)]
    fn ln_1p_unit(self) -> Self {
        fastmath::ln_1p_unit_f32(self)
    }
}

/// `f64`: the correctly rounded libm functions (f64 is the precision gradients are checked in).
impl Real for f64 {
    #[inline(always)]
    fn exp_neg_abs(self) -> Self {
        (-self.abs()).exp()
    }
    #[inline(always)]
    fn ln_1p_unit(self) -> Self {
        self.ln_1p()
    }
}

/// Converts a count or a scalar parameter into `F`.
#[inline]
pub(crate) fn cast<F: Real>(x: f64) -> F {
    F::from_f64(x).expect("f64 converts to every Real type")
}
