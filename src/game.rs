//! Symmetric zero-sum games: the maximin mixed strategy (von Neumann winner) of a skew-symmetric payoff.
//!
//! For a skew-symmetric payoff `A` (`A = −Aᵀ`, game value 0) the maximin strategy `p` solves
//! `max_p min_j (pᵀA)_j` over the probability simplex. With `A` normalised to `max|A| = 1` and
//! `B = A + 2 > 0`, the LP `max 1ᵀy s.t. B y ≤ 1, y ≥ 0` gives the column player's minimax strategy
//! `q = y / 1ᵀy`; for a skew-symmetric game that is also the row player's maximin strategy. The LP is solved
//! exactly (up to floating point) by a dense tableau simplex: Dantzig's rule (most negative reduced cost)
//! while the objective improves, switching for good to Bland's rule (lowest-index entering and leaving
//! variables) after `K` consecutive degenerate pivots, which rules out cycling, so it always terminates.

use crate::error::{GpmError, Result};
use ndarray::{Array1, ArrayView2};

/// Pivot and ratio-test tolerance of the simplex.
const EPS: f64 = 1e-12;

/// Relative tolerance of the skew-symmetry check `|a_ij + a_ji| ≤ SKEW_TOL · max|A|`.
pub const SKEW_TOL: f64 = 1e-9;

/// The default pivot budget for a `K × K` game, `50 (K + 10)²`.
pub fn default_max_iter(k: usize) -> usize {
    50 * (k + 10) * (k + 10)
}

/// Maximin mixed strategy of the symmetric zero-sum game with skew-symmetric payoff `a: [K, K]`.
///
/// Returns `(p, pivots)`: `p ≥ 0`, `Σ p = 1`, with `min_j (pᵀA)_j ≥ 0` up to rounding, and the number of
/// simplex pivots. An all-zero payoff (every strategy optimal) gives the uniform strategy and 0 pivots.
///
/// Errors: `a` not square or empty (`Shape`); a non-finite entry, `a` not skew-symmetric
/// (`|a_ij + a_ji| > 1e-9 · max|A|`), or no optimum within `max_iter` pivots (`Value`).
pub fn maximin_strategy(a: ArrayView2<f64>, max_iter: usize) -> Result<(Array1<f64>, usize)> {
    let (k, k2) = a.dim();
    if k != k2 {
        return Err(GpmError::shape("a", "[K, K] (a square payoff matrix)", format!("[{k}, {k2}]")));
    }
    if k == 0 {
        return Err(GpmError::shape("a", "[K, K] with K ≥ 1", "[0, 0]"));
    }
    if let Some(((i, j), x)) = a.indexed_iter().find(|(_, x)| !x.is_finite()) {
        return Err(GpmError::value("a", "finite payoffs", format!("a[{i}, {j}] = {x}")));
    }
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for i in 0..k {
        for j in 0..=i {
            let s = a[[i, j]] + a[[j, i]];
            if s.abs() > SKEW_TOL * scale {
                return Err(GpmError::value(
                    "a",
                    "a skew-symmetric payoff (a = −aᵀ)",
                    format!("a[{i}, {j}] + a[{j}, {i}] = {s}"),
                ));
            }
        }
    }
    if scale == 0.0 {
        return Ok((Array1::from_elem(k, 1.0 / k as f64), 0));
    }
    let b = a.mapv(|x| x / scale + 2.0);
    let (y, pivots) = simplex_max(&b, max_iter)?;
    let total: f64 = y.iter().sum();
    let mut p: Vec<f64> = y.iter().map(|&v| (v / total).max(0.0)).collect();
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= s);
    Ok((Array1::from_vec(p), pivots))
}

/// `max 1ᵀy s.t. B y ≤ 1, y ≥ 0` for `B > 0` (feasible at `y = 0` with the slack basis, and bounded).
///
/// Returns the optimal `y` and the number of pivots.
fn simplex_max(b: &ndarray::Array2<f64>, max_iter: usize) -> Result<(Vec<f64>, usize)> {
    let (m, n) = b.dim();
    let w = n + m + 1; // columns: y (n), slacks (m), right-hand side
    let rhs = w - 1;
    let mut t = vec![0.0f64; (m + 1) * w];
    for r in 0..m {
        for c in 0..n {
            t[r * w + c] = b[[r, c]];
        }
        t[r * w + n + r] = 1.0;
        t[r * w + rhs] = 1.0;
    }
    for c in 0..n {
        t[m * w + c] = -1.0; // objective row: z − 1ᵀy = 0
    }
    let mut basis: Vec<usize> = (n..n + m).collect();
    let mut it = 0usize;
    let mut bland = false;
    let mut stalled = 0usize;
    let mut pivot = vec![0.0f64; w];
    loop {
        // Entering column: the first negative reduced cost (Bland) or the most negative one (Dantzig,
        // lowest index among equal minima).
        let obj = &t[m * w..m * w + rhs];
        let mut col: Option<usize> = None;
        for (c, &rc) in obj.iter().enumerate() {
            if rc < -EPS {
                match col {
                    None => col = Some(c),
                    Some(best) if !bland && rc < obj[best] => col = Some(c),
                    _ => {}
                }
                if bland {
                    break;
                }
            }
        }
        let Some(col) = col else { break };
        if it >= max_iter {
            return Err(GpmError::value(
                "max_iter",
                "enough simplex pivots to reach an optimum",
                format!("max_iter={max_iter} pivots without finishing"),
            ));
        }
        // Ratio test over rows with a positive pivot entry; ties (relative EPS) go to the lowest basis index.
        let mut best = f64::INFINITY;
        for r in 0..m {
            let v = t[r * w + col];
            if v > EPS {
                best = best.min(t[r * w + rhs] / v);
            }
        }
        if best == f64::INFINITY {
            return Err(GpmError::value("a", "a bounded LP (internal error of the simplex)", "an unbounded column"));
        }
        let tie = best + EPS * best.abs().max(1.0);
        let mut row: Option<usize> = None;
        for r in 0..m {
            let v = t[r * w + col];
            if v > EPS && t[r * w + rhs] / v <= tie && row.map_or(true, |q| basis[r] < basis[q]) {
                row = Some(r);
            }
        }
        let row = row.expect("the minimum ratio is attained by some row");
        if best <= EPS {
            stalled += 1;
            bland = bland || stalled >= m;
        } else {
            stalled = 0;
        }
        let piv = t[row * w + col];
        for (p, &x) in pivot.iter_mut().zip(&t[row * w..(row + 1) * w]) {
            *p = x / piv;
        }
        for r in 0..=m {
            if r == row {
                continue;
            }
            let f = t[r * w + col];
            for (x, &p) in t[r * w..(r + 1) * w].iter_mut().zip(&pivot) {
                *x -= f * p;
            }
        }
        t[row * w..(row + 1) * w].copy_from_slice(&pivot);
        basis[row] = col;
        it += 1;
    }
    let mut y = vec![0.0f64; n];
    for (r, &bi) in basis.iter().enumerate() {
        if bi < n {
            y[bi] = t[r * w + rhs].max(0.0);
        }
    }
    Ok((y, it))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::tests::lcg;
    use ndarray::{array, Array2};

    fn skew(k: usize, seed: u64) -> Array2<f64> {
        let x = Array2::from_shape_vec((k, k), lcg(k * k, seed)).unwrap();
        &x - &x.t()
    }

    /// `min_j (pᵀA)_j` and `max_i (A p)_i`.
    fn value_and_best_reply(a: &Array2<f64>, p: &Array1<f64>) -> (f64, f64) {
        let row = p.dot(a);
        let col = a.dot(p);
        (row.fold(f64::INFINITY, |m, &x| m.min(x)), col.fold(f64::NEG_INFINITY, |m, &x| m.max(x)))
    }

    fn assert_distribution(p: &Array1<f64>) {
        assert!(p.iter().all(|&x| x >= 0.0), "{p}");
        assert!((p.sum() - 1.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn game_rock_paper_scissors_is_uniform() {
        let a = array![[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]];
        let (p, it) = maximin_strategy(a.view(), 1000).unwrap();
        assert_distribution(&p);
        for &x in &p {
            assert!((x - 1.0 / 3.0).abs() < 1e-12, "{p}");
        }
        assert!(it > 0);
    }

    #[test]
    fn game_weighted_rps_hand_solution() {
        // (pᵀA)_j = 0 for all j gives p ∝ (c, b, a).
        for &(x, y, z) in &[(1.0, 2.0, 5.0), (3.0, 1.0, 1.0), (0.5, 0.25, 4.0)] {
            let a = array![[0.0, x, -y], [-x, 0.0, z], [y, -z, 0.0]];
            let (p, _) = maximin_strategy(a.view(), 1000).unwrap();
            let want = [z, y, x].map(|v| v / (x + y + z));
            for (g, w) in p.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{p} vs {want:?}");
            }
        }
    }

    #[test]
    fn game_condorcet_winner_is_pure() {
        // Item 3 beats everyone; the others play rock-paper-scissors among themselves.
        let mut a = Array2::zeros((4, 4));
        a.slice_mut(ndarray::s![..3, ..3]).assign(&array![[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]]);
        for i in 0..3 {
            a[[3, i]] = 0.2;
            a[[i, 3]] = -0.2;
        }
        let (p, _) = maximin_strategy(a.view(), 1000).unwrap();
        assert_distribution(&p);
        for (i, &x) in p.iter().enumerate() {
            assert!((x - if i == 3 { 1.0 } else { 0.0 }).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn game_random_skew_matrices_are_solved() {
        for (k, seed) in [(1, 0), (2, 1), (5, 2), (17, 3), (40, 4), (90, 5)] {
            let a = skew(k, seed);
            let (p, _) = maximin_strategy(a.view(), default_max_iter(k)).unwrap();
            assert_distribution(&p);
            let scale = a.fold(0.0f64, |m, x| m.max(x.abs())).max(1.0);
            let (value, best_reply) = value_and_best_reply(&a, &p);
            assert!(value >= -1e-9 * scale, "K={k}: min_j (pᵀA)_j = {value}");
            assert!(best_reply - value <= 1e-9 * scale, "K={k}: gap {}", best_reply - value);
        }
    }

    #[test]
    fn game_degenerate_sign_tournaments() {
        // Sign-only tournaments are highly degenerate LPs: exercises the switch to Bland's rule.
        for seed in 0..5 {
            let k = 25;
            let x = lcg(k * k, 100 + seed);
            let mut a = Array2::zeros((k, k));
            for i in 0..k {
                for j in i + 1..k {
                    let s = x[i * k + j].signum();
                    a[[i, j]] = s;
                    a[[j, i]] = -s;
                }
            }
            let (p, _) = maximin_strategy(a.view(), default_max_iter(k)).unwrap();
            assert_distribution(&p);
            let (value, _) = value_and_best_reply(&a, &p);
            assert!(value >= -1e-9, "{value}");
        }
    }

    #[test]
    fn game_zero_payoff_is_uniform_and_scale_invariant() {
        let (p, it) = maximin_strategy(Array2::zeros((4, 4)).view(), 10).unwrap();
        assert_eq!(it, 0);
        assert!(p.iter().all(|&x| x == 0.25));
        let a = skew(7, 9);
        let (p1, _) = maximin_strategy(a.view(), 10_000).unwrap();
        let (p2, _) = maximin_strategy((&a * 7.5).view(), 10_000).unwrap();
        for (x, y) in p1.iter().zip(&p2) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn game_bad_input_is_a_typed_error() {
        let e = maximin_strategy(Array2::zeros((2, 3)).view(), 10).unwrap_err();
        assert!(matches!(e, GpmError::Shape { arg: "a", .. }), "{e}");
        assert!(e.to_string().contains("[2, 3]"), "{e}");
        let e = maximin_strategy(Array2::zeros((0, 0)).view(), 10).unwrap_err();
        assert!(matches!(e, GpmError::Shape { arg: "a", .. }), "{e}");
        let mut a = skew(3, 1);
        a[[0, 1]] = f64::NAN;
        let e = maximin_strategy(a.view(), 10).unwrap_err();
        assert!(matches!(e, GpmError::Value { arg: "a", .. }) && e.to_string().contains("a[0, 1] = NaN"), "{e}");
        a[[0, 1]] = f64::INFINITY;
        assert!(matches!(maximin_strategy(a.view(), 10), Err(GpmError::Value { arg: "a", .. })));
        let e = maximin_strategy(Array2::ones((3, 3)).view(), 10).unwrap_err();
        assert!(matches!(e, GpmError::Value { arg: "a", .. }) && e.to_string().contains("skew"), "{e}");
        let e = maximin_strategy(skew(10, 2).view(), 0).unwrap_err();
        assert!(matches!(e, GpmError::Value { arg: "max_iter", .. }), "{e}");
    }
}
