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

pub mod error;
pub mod loss;
pub mod parallel;
pub mod score;

#[cfg(feature = "python")]
mod python;

pub use error::{GpmError, Result};

/// The floating-point types the kernels are instantiated for.
pub trait Real: num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::fmt::Debug + 'static {}
impl Real for f32 {}
impl Real for f64 {}

/// Converts a count or a scalar parameter into `F`.
#[inline]
pub(crate) fn cast<F: Real>(x: f64) -> F {
    F::from_f64(x).expect("f64 converts to every Real type")
}
