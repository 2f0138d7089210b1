//! Branch-free `f32` `e^{−|x|}` and `ln(1 + e)` for `e ∈ [0, 1]`: the two transcendentals of the
//! logistic losses. Written with plain arithmetic, selects and bit casts so that LLVM vectorises the
//! loss loops with SSE2 (the wheel's baseline), where calls into libm would not. Both stay within a few
//! ulp of the correctly rounded result (tested below against `f64`), and NaN in gives NaN out.

/// `e^{−|x|}` for `f32`: Cephes-style range reduction `x = n·ln2 + r` and a degree-6 polynomial.
/// Arguments below −87 are clamped (e^{−87} ≈ 1.6e-38, the smallest normal is 1.2e-38).
#[inline(always)]
pub fn exp_neg_abs_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer held in the low bits
    let y = -x.abs();
    let y = if y < -87.0 { -87.0 } else { y }; // NaN stays NaN (the comparison is false)
    let t = y * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = y - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    p * scale
}

/// `ln(1 + e)` for `e ∈ [0, 1]` as `2·atanh(u)`, `u = e/(2 + e) ∈ [0, 1/3]`, by its odd series
/// (truncation error below 2e-8 relative). Accurate for tiny `e`, unlike `ln(1 + e)` evaluated directly.
#[inline(always)]
pub fn ln_1p_unit_f32(e: f32) -> f32 {
    let u = e / (2.0 + e);
    let u2 = u * u;
    let mut p = 1.0f32 / 13.0;
    p = p * u2 + 1.0 / 11.0;
    p = p * u2 + 1.0 / 9.0;
    p = p * u2 + 1.0 / 7.0;
    p = p * u2 + 1.0 / 5.0;
    p = p * u2 + 1.0 / 3.0;
    let two_u = 2.0 * u;
    two_u + two_u * (u2 * p) // the leading term alone, then the small correction: ~1 ulp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.to_bits() + 1) - b32).abs() as f64;
        (a as f64 - b).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = i as f32 * (87.0 / 2_000_000.0);
            worst = worst.max(ulps(exp_neg_abs_f32(x), (-(x as f64)).exp()));
            assert_eq!(exp_neg_abs_f32(-x), exp_neg_abs_f32(x));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_neg_abs_f32(0.0), 1.0);
        assert!(exp_neg_abs_f32(f32::NAN).is_nan());
        assert!(exp_neg_abs_f32(f32::INFINITY) < 2e-38);
    }

    #[test]
    fn ln_1p_is_within_two_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let e = i as f32 / 1_000_000.0;
            worst = worst.max(ulps(ln_1p_unit_f32(e), (e as f64).ln_1p()));
        }
        for i in 0..200 {
            let e = 2f32.powi(-i / 2);
            worst = worst.max(ulps(ln_1p_unit_f32(e), (e as f64).ln_1p()));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert!(ln_1p_unit_f32(f32::NAN).is_nan());
        assert_eq!(ln_1p_unit_f32(0.0), 0.0);
    }
}
