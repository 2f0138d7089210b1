//! Score K = 4 responses to one prompt with gpmkit's kernels on Candle tensors.
//!
//! Run: `cargo run --example score_k_embeddings` (in crates/gpmkit-candle).

use candle_core::{Device, Result, Tensor};

fn main() -> Result<()> {
    // Preference embeddings v ∈ R^{2k} (k = 2) of K = 4 responses, e.g. from a GPM value head.
    let v = Tensor::new(
        &[[[1.0f32, 0.0, 0.5, 0.5], [0.0, 1.0, 0.5, -0.5], [-1.0, 0.0, 0.0, 1.0], [0.2, 0.2, -0.3, 0.1]]],
        &Device::Cpu,
    )?;
    let m = gpmkit_candle::preference_matrix(&v)?; // [1, 4, 4], skew-symmetric
    println!("M[i, j] = s(i ≻ j):\n{}", m.squeeze(0)?);
    // Win score against the uniform population: mean over j of s(i ≻ j).
    println!("win scores: {}", m.squeeze(0)?.mean(1)?);
    // GPM loss of "response 0 preferred over response 1" at τ = 0.1.
    let (c, r) = (v.squeeze(0)?.narrow(0, 0, 1)?, v.squeeze(0)?.narrow(0, 1, 1)?);
    println!("gpm_loss(0 ≻ 1) = {}", gpmkit_candle::gpm_loss(&c, &r, 0.1)?);
    Ok(())
}
