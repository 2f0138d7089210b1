//! Pair scores, K×K preference matrices and population win scores: forward and backward.
//!
//! Shapes (N pairs, P prompts, K responses per prompt, D = 2k embedding width):
//! - pairs:  `v_i, v_j: [N, D]`, `gate: [N, k]`              → `s: [N]`
//! - matrix: `v: [P, K, D]`,   `gate: [P, k]`               → `M: [P, K, K]`, `M[p,i,j] = s(i ≻ j)`
//! - win:    `v: [P, K, D]`, `weights: [P, K]`, `gate: [P, k]` → `ŝ: [P, K]`, `ŝ_i = Σ_j w_j s(i ≻ j)`
//!
//! A block's term is computed as `λ_l · (x0·y1 − x1·y0)`: swapping the two vectors negates it exactly in
//! IEEE arithmetic, so `s(i,j) = −s(j,i)` and `s(i,i) = 0` hold bit for bit, not just to rounding.

use crate::error::{GpmError, Result};
use crate::parallel::{map_ordered, n_chunks, split_opt};
use crate::{cast, Real};
use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayViewMut1, ArrayViewMut2, ArrayViewMut3, CowArray, Dimension};

/// Rows per parallel task for row-wise kernels (pairs, losses). Fixed, so the split never depends on
/// the thread count.
pub const PAIR_CHUNK: usize = 4096;

/// The embedding width a kernel instantiation runs with: the compile-time `D`, or `d` when `D = 0`.
///
/// Kernels are instantiated for the common widths 2, 4, 6, 8 and 16 (see [`by_width`]) so that the
/// per-row loops have constant trip counts and unroll; any other width runs the `D = 0` version.
#[inline(always)]
pub(crate) const fn width<const D: usize>(d: usize) -> usize {
    if D == 0 {
        d
    } else {
        D
    }
}

/// Calls `f::<F, D>(args)` with `D` the compile-time width for common `d`, or `D = 0`.
macro_rules! by_width {
    ($d:expr, $f:ident::<$F:ty>($($a:expr),* $(,)?)) => {
        match $d {
            2 => $f::<$F, 2>($($a),*),
            4 => $f::<$F, 4>($($a),*),
            6 => $f::<$F, 6>($($a),*),
            8 => $f::<$F, 8>($($a),*),
            16 => $f::<$F, 16>($($a),*),
            _ => $f::<$F, 0>($($a),*),
        }
    };
}
pub(crate) use by_width;

/// `Σ_l λ_l (a[2l] b[2l+1] − a[2l+1] b[2l])`, with `λ = 1` when `lam` is `None`.
#[inline(always)]
pub fn score_row<F: Real>(a: &[F], b: &[F], lam: Option<&[F]>) -> F {
    let mut s = F::zero();
    match lam {
        None => {
            for (x, y) in a.chunks_exact(2).zip(b.chunks_exact(2)) {
                s = s + (x[0] * y[1] - x[1] * y[0]);
            }
        }
        Some(lam) => {
            for ((x, y), &l) in a.chunks_exact(2).zip(b.chunks_exact(2)).zip(lam) {
                s = s + l * (x[0] * y[1] - x[1] * y[0]);
            }
        }
    }
    s
}

/// Writes `g · ∂s(a, b)/∂a`, `g · ∂s/∂b` and `g · ∂s/∂λ` into the row buffers that are given.
#[inline(always)]
pub(crate) fn score_row_backward<F: Real>(
    g: F,
    a: &[F],
    b: &[F],
    lam: Option<&[F]>,
    ga: Option<&mut [F]>,
    gb: Option<&mut [F]>,
    gl: Option<&mut [F]>,
) {
    // ∂s/∂a[2l] = λ_l b[2l+1], ∂s/∂a[2l+1] = −λ_l b[2l], ∂s/∂b[2l] = −λ_l a[2l+1], ∂s/∂b[2l+1] = λ_l a[2l]
    #[inline(always)]
    fn rot_into<F: Real>(out: &mut [F], x: &[F], lam: Option<&[F]>, g: F, sign: F) {
        match lam {
            None => {
                let c = g * sign;
                for (o, y) in out.chunks_exact_mut(2).zip(x.chunks_exact(2)) {
                    o[0] = c * y[1];
                    o[1] = -(c * y[0]);
                }
            }
            Some(lam) => {
                for ((o, y), &l) in out.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(lam) {
                    let c = g * l * sign;
                    o[0] = c * y[1];
                    o[1] = -(c * y[0]);
                }
            }
        }
    }
    if let Some(ga) = ga {
        rot_into(ga, b, lam, g, F::one());
    }
    if let Some(gb) = gb {
        rot_into(gb, a, lam, g, -F::one());
    }
    if let Some(gl) = gl {
        for ((o, x), y) in gl.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
            *o = g * (x[0] * y[1] - x[1] * y[0]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// shape checks and layout helpers

fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

pub(crate) fn check_width(arg: &'static str, d: usize) -> Result<usize> {
    if d == 0 || d % 2 != 0 {
        return Err(GpmError::shape(
            arg,
            "[..., 2k] with an even, positive last dimension",
            format!("last dimension {d}"),
        ));
    }
    Ok(d / 2)
}

pub(crate) fn check_dims(arg: &'static str, got: &[usize], want: &[usize], what: &str) -> Result<()> {
    if got != want {
        return Err(GpmError::shape(arg, format!("{} ({what})", shape_str(want)), shape_str(got)));
    }
    Ok(())
}

/// A read-only input as a contiguous slice, copying only if the view is strided.
pub(crate) fn contiguous<'a, F: Real, D: Dimension>(a: ndarray::ArrayView<'a, F, D>) -> CowArray<'a, F, D> {
    if a.is_standard_layout() {
        CowArray::from(a)
    } else {
        CowArray::from(a.as_standard_layout().into_owned())
    }
}

pub(crate) fn out_slice<'a, F, D: Dimension>(
    arg: &'static str,
    a: Option<ndarray::ArrayViewMut<'a, F, D>>,
) -> Result<Option<&'a mut [F]>> {
    match a {
        None => Ok(None),
        Some(a) => a.into_slice().map(Some).ok_or(GpmError::Layout { arg }),
    }
}

fn slice_of<'b, F: Real, D: Dimension>(a: &'b CowArray<'_, F, D>) -> &'b [F] {
    a.as_slice().expect("standard layout arrays are contiguous")
}

fn check_gate_rows(gate: &Option<ArrayView2<'_, impl Real>>, rows: usize, k: usize, what: &str) -> Result<()> {
    if let Some(g) = gate {
        check_dims("gate", g.shape(), &[rows, k], what)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// pairs

/// `out[n] = s(v_i[n] ≻ v_j[n])` with the gate row `gate[n]` (or λ = 1).
pub fn preference_score<F: Real>(
    v_i: ArrayView2<F>,
    v_j: ArrayView2<F>,
    gate: Option<ArrayView2<F>>,
    out: ArrayViewMut1<F>,
) -> Result<()> {
    let (n, d) = v_i.dim();
    let k = check_width("v_i", d)?;
    check_dims("v_j", v_j.shape(), &[n, d], "same as v_i")?;
    check_gate_rows(&gate, n, k, "one gate row of width k per pair")?;
    check_dims("out", out.shape(), &[n], "one score per pair")?;
    let (vi, vj) = (contiguous(v_i), contiguous(v_j));
    let gate = gate.map(contiguous);
    let (vi, vj, gate) = (slice_of(&vi), slice_of(&vj), gate.as_ref().map(slice_of));
    let out = out_slice("out", Some(out))?.expect("given");
    by_width!(d, score_pairs::<F>(vi, vj, gate, out, d));
    Ok(())
}

fn score_pairs<F: Real, const D: usize>(vi: &[F], vj: &[F], gate: Option<&[F]>, out: &mut [F], d: usize) {
    let chunks: Vec<&mut [F]> = out.chunks_mut(PAIR_CHUNK).collect();
    map_ordered(chunks, |c, o| {
        let d = width::<D>(d);
        let k = d / 2;
        let r0 = c * PAIR_CHUNK;
        for (t, s) in o.iter_mut().enumerate() {
            let r = r0 + t;
            *s = score_row(&vi[r * d..(r + 1) * d], &vj[r * d..(r + 1) * d], gate.map(|g| &g[r * k..(r + 1) * k]));
        }
    });
}

/// Backward of [`preference_score`]: `grad_* = grad[n] · ∂s_n/∂*`. Outputs that are `None` are skipped.
pub fn preference_score_backward<F: Real>(
    grad: ArrayView1<F>,
    v_i: ArrayView2<F>,
    v_j: ArrayView2<F>,
    gate: Option<ArrayView2<F>>,
    grad_v_i: Option<ArrayViewMut2<F>>,
    grad_v_j: Option<ArrayViewMut2<F>>,
    grad_gate: Option<ArrayViewMut2<F>>,
) -> Result<()> {
    let (n, d) = v_i.dim();
    let k = check_width("v_i", d)?;
    check_dims("v_j", v_j.shape(), &[n, d], "same as v_i")?;
    check_gate_rows(&gate, n, k, "one gate row of width k per pair")?;
    check_dims("grad", grad.shape(), &[n], "one upstream gradient per pair")?;
    if let Some(g) = &grad_v_i {
        check_dims("grad_v_i", g.shape(), &[n, d], "same as v_i")?;
    }
    if let Some(g) = &grad_v_j {
        check_dims("grad_v_j", g.shape(), &[n, d], "same as v_j")?;
    }
    if let Some(g) = &grad_gate {
        if gate.is_none() {
            return Err(GpmError::value("grad_gate", "None when no gate is given", "an output buffer"));
        }
        check_dims("grad_gate", g.shape(), &[n, k], "same as gate")?;
    }
    let grad = contiguous(grad);
    let (vi, vj) = (contiguous(v_i), contiguous(v_j));
    let gate = gate.map(contiguous);
    let (grad, vi, vj, gate) = (slice_of(&grad), slice_of(&vi), slice_of(&vj), gate.as_ref().map(slice_of));
    let nc = n_chunks(n, PAIR_CHUNK);
    let gvi = split_opt(out_slice("grad_v_i", grad_v_i)?, PAIR_CHUNK * d, nc);
    let gvj = split_opt(out_slice("grad_v_j", grad_v_j)?, PAIR_CHUNK * d, nc);
    let ggt = split_opt(out_slice("grad_gate", grad_gate)?, PAIR_CHUNK * k, nc);
    let items: Vec<_> = gvi.into_iter().zip(gvj).zip(ggt).collect();
    by_width!(d, score_pairs_backward::<F>(grad, vi, vj, gate, items, d));
    Ok(())
}

type Outs3<'a, F> = ((Option<&'a mut [F]>, Option<&'a mut [F]>), Option<&'a mut [F]>);

fn score_pairs_backward<F: Real, const D: usize>(
    grad: &[F],
    vi: &[F],
    vj: &[F],
    gate: Option<&[F]>,
    items: Vec<Outs3<'_, F>>,
    d: usize,
) {
    let n = grad.len();
    map_ordered(items, |c, ((mut a, mut b), mut l)| {
        let d = width::<D>(d);
        let k = d / 2;
        let r0 = c * PAIR_CHUNK;
        let rows = (n - r0).min(PAIR_CHUNK);
        for t in 0..rows {
            let r = r0 + t;
            score_row_backward(
                grad[r],
                &vi[r * d..(r + 1) * d],
                &vj[r * d..(r + 1) * d],
                gate.map(|g| &g[r * k..(r + 1) * k]),
                a.as_deref_mut().map(|s| &mut s[t * d..(t + 1) * d]),
                b.as_deref_mut().map(|s| &mut s[t * d..(t + 1) * d]),
                l.as_deref_mut().map(|s| &mut s[t * k..(t + 1) * k]),
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------------
// K×K matrices

/// Matrix entries per parallel task in the matrix kernels (whole prompts; see `matrix_prompt_chunk`).
const MATRIX_CHUNK_ENTRIES: usize = 65536;

fn check_population<F: Real>(v: &ArrayView3<F>, gate: &Option<ArrayView2<F>>) -> Result<(usize, usize, usize, usize)> {
    let (p, kk, d) = v.dim();
    let k = check_width("v", d)?;
    check_gate_rows(gate, p, k, "one gate row of width k per prompt")?;
    Ok((p, kk, d, k))
}

/// `out[p, i, j] = s(v[p,i] ≻ v[p,j])` with the prompt's gate `gate[p]`.
pub fn preference_matrix<F: Real>(v: ArrayView3<F>, gate: Option<ArrayView2<F>>, out: ArrayViewMut3<F>) -> Result<()> {
    let (p, kk, d, _k) = check_population(&v, &gate)?;
    check_dims("out", out.shape(), &[p, kk, kk], "[P, K, K]")?;
    let v = contiguous(v);
    let gate = gate.map(contiguous);
    let (v, gate) = (slice_of(&v), gate.as_ref().map(slice_of));
    let out = out_slice("out", Some(out))?.expect("given");
    if kk == 0 {
        return Ok(());
    }
    by_width!(d, matrix_rows::<F>(v, gate, out, kk, d));
    Ok(())
}

/// Prompts per parallel task in the matrix kernels: about `MATRIX_CHUNK_ENTRIES` matrix entries.
fn matrix_prompt_chunk(kk: usize) -> usize {
    (MATRIX_CHUNK_ENTRIES / (kk * kk).max(1)).max(1)
}

/// One prompt's embeddings split by block coordinate and transposed: `x0[l·K + j] = v_j[2l]`,
/// `x1[l·K + j] = v_j[2l+1]`, so that a row of the matrix is a sum of contiguous, vectorisable loops.
fn transpose_blocks<F: Real>(vp: &[F], kk: usize, d: usize, x0: &mut [F], x1: &mut [F]) {
    for (j, vj) in vp.chunks_exact(d).enumerate() {
        for (l, y) in vj.chunks_exact(2).enumerate() {
            x0[l * kk + j] = y[0];
            x1[l * kk + j] = y[1];
        }
    }
}

fn matrix_rows<F: Real, const D: usize>(v: &[F], gate: Option<&[F]>, out: &mut [F], kk: usize, d: usize) {
    let pc = matrix_prompt_chunk(kk);
    let chunks: Vec<&mut [F]> = out.chunks_mut(pc * kk * kk).collect();
    map_ordered(chunks, |c, o| {
        let d = width::<D>(d);
        let k = d / 2;
        let (mut x0, mut x1) = (vec![F::zero(); k * kk], vec![F::zero(); k * kk]);
        for (t, mp) in o.chunks_mut(kk * kk).enumerate() {
            let pr = c * pc + t;
            let vp = &v[pr * kk * d..(pr + 1) * kk * d];
            transpose_blocks(vp, kk, d, &mut x0, &mut x1);
            let lam = gate.map(|g| &g[pr * k..(pr + 1) * k]);
            for (row, a) in mp.chunks_exact_mut(kk).zip(vp.chunks_exact(d)) {
                // row[j] = Σ_l λ_l (a[2l]·v_j[2l+1] − a[2l+1]·v_j[2l]): the same operations in the same order
                // as `score_row(a, v_j)`, so the matrix equals the pair scores bit for bit.
                row.iter_mut().for_each(|m| *m = F::zero());
                for l in 0..k {
                    let (a0, a1) = (a[2 * l], a[2 * l + 1]);
                    let (y0, y1) = (&x0[l * kk..(l + 1) * kk], &x1[l * kk..(l + 1) * kk]);
                    match lam {
                        None => {
                            for ((m, &b0), &b1) in row.iter_mut().zip(y0).zip(y1) {
                                *m = *m + (a0 * b1 - a1 * b0);
                            }
                        }
                        Some(lam) => {
                            let s = lam[l];
                            for ((m, &b0), &b1) in row.iter_mut().zip(y0).zip(y1) {
                                *m = *m + s * (a0 * b1 - a1 * b0);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Backward of [`preference_matrix`].
///
/// With `u_j = rot(v_j)` (`u[2l] = v[2l+1]`, `u[2l+1] = −v[2l]`) and `H_m = Σ_j (G[m,j] − G[j,m]) u_j`:
/// `∂/∂v_m = λ ⊙ H_m` and `∂/∂λ_l = ½ Σ_m (v_m[2l] H_m[2l] + v_m[2l+1] H_m[2l+1])`.
pub fn preference_matrix_backward<F: Real>(
    grad: ArrayView3<F>,
    v: ArrayView3<F>,
    gate: Option<ArrayView2<F>>,
    grad_v: Option<ArrayViewMut3<F>>,
    grad_gate: Option<ArrayViewMut2<F>>,
) -> Result<()> {
    let (p, kk, d, k) = check_population(&v, &gate)?;
    check_dims("grad", grad.shape(), &[p, kk, kk], "[P, K, K]")?;
    if let Some(g) = &grad_v {
        check_dims("grad_v", g.shape(), &[p, kk, d], "same as v")?;
    }
    if let Some(g) = &grad_gate {
        if gate.is_none() {
            return Err(GpmError::value("grad_gate", "None when no gate is given", "an output buffer"));
        }
        check_dims("grad_gate", g.shape(), &[p, k], "same as gate")?;
    }
    let grad = contiguous(grad);
    let v = contiguous(v);
    let gate = gate.map(contiguous);
    let (gr, v, gate) = (slice_of(&grad), slice_of(&v), gate.as_ref().map(slice_of));
    let grad_v = out_slice("grad_v", grad_v)?;
    let grad_gate = out_slice("grad_gate", grad_gate)?;
    if kk == 0 {
        if let Some(gg) = grad_gate {
            gg.iter_mut().for_each(|x| *x = F::zero());
        }
        return Ok(());
    }
    let pc = matrix_prompt_chunk(kk);
    let nc = n_chunks(p, pc);
    let gvs = split_opt(grad_v, pc * kk * d, nc);
    let ggs = split_opt(grad_gate, pc * k, nc);
    let items: Vec<_> = gvs.into_iter().zip(ggs).collect();
    by_width!(d, matrix_rows_backward::<F>(gr, v, gate, items, kk, d));
    Ok(())
}

type Outs2<'a, F> = (Option<&'a mut [F]>, Option<&'a mut [F]>);

fn matrix_rows_backward<F: Real, const D: usize>(
    gr: &[F],
    v: &[F],
    gate: Option<&[F]>,
    items: Vec<Outs2<'_, F>>,
    kk: usize,
    d: usize,
) {
    let p = v.len() / (kk * width::<D>(d));
    let pc = matrix_prompt_chunk(kk);
    let half: F = cast(0.5);
    map_ordered(items, |c, (mut gv, mut gg)| {
        let d = width::<D>(d);
        let k = d / 2;
        let mut u = vec![F::zero(); kk * d]; // rot(v_j) rows
        let mut h = vec![F::zero(); d];
        let np = (p - c * pc).min(pc);
        for t in 0..np {
            let pr = c * pc + t;
            let vp = &v[pr * kk * d..(pr + 1) * kk * d];
            let gp = &gr[pr * kk * kk..(pr + 1) * kk * kk];
            let lam = gate.map(|g| &g[pr * k..(pr + 1) * k]);
            for (uj, vj) in u.chunks_exact_mut(2).zip(vp.chunks_exact(2)) {
                uj[0] = vj[1];
                uj[1] = -vj[0];
            }
            let mut gl = gg.as_deref_mut().map(|g| &mut g[t * k..(t + 1) * k]);
            if let Some(gl) = gl.as_deref_mut() {
                gl.iter_mut().for_each(|x| *x = F::zero());
            }
            for m in 0..kk {
                // H_m = Σ_j (G[m,j] − G[j,m]) u_j, an axpy per j
                h.iter_mut().for_each(|x| *x = F::zero());
                for (j, uj) in u.chunks_exact(d).enumerate() {
                    let dmj = gp[m * kk + j] - gp[j * kk + m];
                    for (x, &y) in h.iter_mut().zip(uj) {
                        *x = *x + dmj * y;
                    }
                }
                if let Some(gv) = gv.as_deref_mut() {
                    let out = &mut gv[(t * kk + m) * d..(t * kk + m + 1) * d];
                    match lam {
                        None => out.copy_from_slice(&h),
                        Some(lam) => {
                            for ((o, x), &s) in out.chunks_exact_mut(2).zip(h.chunks_exact(2)).zip(lam) {
                                o[0] = s * x[0];
                                o[1] = s * x[1];
                            }
                        }
                    }
                }
                if let Some(gl) = gl.as_deref_mut() {
                    let vm = &vp[m * d..(m + 1) * d];
                    for ((o, x), y) in gl.iter_mut().zip(vm.chunks_exact(2)).zip(h.chunks_exact(2)) {
                        *o = *o + half * (x[0] * y[0] + x[1] * y[1]);
                    }
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------
// population win scores

/// Prompts per parallel task in the win-score kernels.
const WIN_PROMPT_CHUNK: usize = 256;

fn check_weights<F: Real>(w: &Option<ArrayView2<F>>, p: usize, kk: usize) -> Result<()> {
    if let Some(w) = w {
        check_dims("weights", w.shape(), &[p, kk], "one weight per response")?;
    }
    Ok(())
}

/// `v̄ = Σ_j w_j v_j` (uniform `1/K` without weights), accumulated in response order.
#[inline]
fn weighted_mean<F: Real>(vp: &[F], w: Option<&[F]>, kk: usize, d: usize, out: &mut [F]) {
    out.iter_mut().for_each(|x| *x = F::zero());
    let uniform = if kk > 0 { F::one() / cast::<F>(kk as f64) } else { F::zero() };
    for j in 0..kk {
        let wj = w.map_or(uniform, |w| w[j]);
        for (o, &x) in out.iter_mut().zip(&vp[j * d..(j + 1) * d]) {
            *o = *o + wj * x;
        }
    }
}

/// `out[p, i] = Σ_j w[p,j] · s(v[p,i] ≻ v[p,j]) = s(v[p,i] ≻ v̄_p)`: O(K·D) per prompt, not O(K²·D).
pub fn win_score<F: Real>(
    v: ArrayView3<F>,
    weights: Option<ArrayView2<F>>,
    gate: Option<ArrayView2<F>>,
    out: ArrayViewMut2<F>,
) -> Result<()> {
    let (p, kk, d, _k) = check_population(&v, &gate)?;
    check_weights(&weights, p, kk)?;
    check_dims("out", out.shape(), &[p, kk], "[P, K]")?;
    let v = contiguous(v);
    let w = weights.map(contiguous);
    let gate = gate.map(contiguous);
    let (v, w, gate) = (slice_of(&v), w.as_ref().map(slice_of), gate.as_ref().map(slice_of));
    let out = out_slice("out", Some(out))?.expect("given");
    if kk == 0 {
        return Ok(());
    }
    by_width!(d, win_rows::<F>(v, w, gate, out, kk, d));
    Ok(())
}

fn win_rows<F: Real, const D: usize>(v: &[F], w: Option<&[F]>, gate: Option<&[F]>, out: &mut [F], kk: usize, d: usize) {
    let chunks: Vec<&mut [F]> = out.chunks_mut(WIN_PROMPT_CHUNK * kk).collect();
    map_ordered(chunks, |c, o| {
        let d = width::<D>(d);
        let k = d / 2;
        let mut bar = vec![F::zero(); d];
        for (t, orow) in o.chunks_mut(kk).enumerate() {
            let pr = c * WIN_PROMPT_CHUNK + t;
            let vp = &v[pr * kk * d..(pr + 1) * kk * d];
            weighted_mean(vp, w.map(|w| &w[pr * kk..(pr + 1) * kk]), kk, d, &mut bar);
            let lam = gate.map(|g| &g[pr * k..(pr + 1) * k]);
            for (i, s) in orow.iter_mut().enumerate() {
                *s = score_row(&vp[i * d..(i + 1) * d], &bar, lam);
            }
        }
    });
}

/// Backward of [`win_score`]. With `ḡ = Σ_i g_i v_i` and `∂v̄ = −λ ⊙ rot(ḡ)`:
/// `∂/∂v_i = g_i λ ⊙ rot(v̄) + w_i ∂v̄`, `∂/∂w_j = ⟨v_j, ∂v̄⟩`, `∂/∂λ_l = ḡ[2l] v̄[2l+1] − ḡ[2l+1] v̄[2l]`.
#[allow(clippy::too_many_arguments)]
pub fn win_score_backward<F: Real>(
    grad: ArrayView2<F>,
    v: ArrayView3<F>,
    weights: Option<ArrayView2<F>>,
    gate: Option<ArrayView2<F>>,
    grad_v: Option<ArrayViewMut3<F>>,
    grad_weights: Option<ArrayViewMut2<F>>,
    grad_gate: Option<ArrayViewMut2<F>>,
) -> Result<()> {
    let (p, kk, d, k) = check_population(&v, &gate)?;
    check_weights(&weights, p, kk)?;
    check_dims("grad", grad.shape(), &[p, kk], "[P, K]")?;
    if let Some(g) = &grad_v {
        check_dims("grad_v", g.shape(), &[p, kk, d], "same as v")?;
    }
    if let Some(g) = &grad_weights {
        if weights.is_none() {
            return Err(GpmError::value("grad_weights", "None when no weights are given", "an output buffer"));
        }
        check_dims("grad_weights", g.shape(), &[p, kk], "same as weights")?;
    }
    if let Some(g) = &grad_gate {
        if gate.is_none() {
            return Err(GpmError::value("grad_gate", "None when no gate is given", "an output buffer"));
        }
        check_dims("grad_gate", g.shape(), &[p, k], "same as gate")?;
    }
    let grad = contiguous(grad);
    let v = contiguous(v);
    let w = weights.map(contiguous);
    let gate = gate.map(contiguous);
    let (gr, v, w, gate) = (slice_of(&grad), slice_of(&v), w.as_ref().map(slice_of), gate.as_ref().map(slice_of));
    let nc = n_chunks(p, WIN_PROMPT_CHUNK);
    let gvs = split_opt(out_slice("grad_v", grad_v)?, WIN_PROMPT_CHUNK * kk * d, nc);
    let gws = split_opt(out_slice("grad_weights", grad_weights)?, WIN_PROMPT_CHUNK * kk, nc);
    let ggs = split_opt(out_slice("grad_gate", grad_gate)?, WIN_PROMPT_CHUNK * k, nc);
    let items: Vec<_> = gvs.into_iter().zip(gws).zip(ggs).collect();
    by_width!(d, win_rows_backward::<F>(gr, v, w, gate, items, (p, kk), d));
    Ok(())
}

fn win_rows_backward<F: Real, const D: usize>(
    gr: &[F],
    v: &[F],
    w: Option<&[F]>,
    gate: Option<&[F]>,
    items: Vec<Outs3<'_, F>>,
    (p, kk): (usize, usize),
    d: usize,
) {
    let uniform = if kk > 0 { F::one() / cast::<F>(kk as f64) } else { F::zero() };
    map_ordered(items, |c, ((mut gv, mut gw), mut gg)| {
        let d = width::<D>(d);
        let k = d / 2;
        let mut bar = vec![F::zero(); d];
        let mut gbar = vec![F::zero(); d];
        let mut dbar = vec![F::zero(); d];
        let np = (p - c * WIN_PROMPT_CHUNK).min(WIN_PROMPT_CHUNK);
        for t in 0..np {
            let pr = c * WIN_PROMPT_CHUNK + t;
            let vp = &v[pr * kk * d..(pr + 1) * kk * d];
            let gp = &gr[pr * kk..(pr + 1) * kk];
            let wp = w.map(|w| &w[pr * kk..(pr + 1) * kk]);
            let lam = gate.map(|g| &g[pr * k..(pr + 1) * k]);
            weighted_mean(vp, wp, kk, d, &mut bar);
            gbar.iter_mut().for_each(|x| *x = F::zero());
            for i in 0..kk {
                for (o, &x) in gbar.iter_mut().zip(&vp[i * d..(i + 1) * d]) {
                    *o = *o + gp[i] * x;
                }
            }
            for l in 0..k {
                let s = lam.map_or(F::one(), |lam| lam[l]);
                dbar[2 * l] = -(s * gbar[2 * l + 1]);
                dbar[2 * l + 1] = s * gbar[2 * l];
            }
            if let Some(gv) = gv.as_deref_mut() {
                let gvp = &mut gv[t * kk * d..(t + 1) * kk * d];
                for i in 0..kk {
                    let wi = wp.map_or(uniform, |w| w[i]);
                    let o = &mut gvp[i * d..(i + 1) * d];
                    for l in 0..k {
                        let s = lam.map_or(F::one(), |lam| lam[l]) * gp[i];
                        o[2 * l] = s * bar[2 * l + 1] + wi * dbar[2 * l];
                        o[2 * l + 1] = -(s * bar[2 * l]) + wi * dbar[2 * l + 1];
                    }
                }
            }
            if let Some(gw) = gw.as_deref_mut() {
                for j in 0..kk {
                    let vj = &vp[j * d..(j + 1) * d];
                    gw[t * kk + j] = vj.iter().zip(&dbar).fold(F::zero(), |acc, (&x, &y)| acc + x * y);
                }
            }
            if let Some(gg) = gg.as_deref_mut() {
                for l in 0..k {
                    gg[t * k + l] = gbar[2 * l] * bar[2 * l + 1] - gbar[2 * l + 1] * bar[2 * l];
                }
            }
        }
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::parallel::set_num_threads;
    use ndarray::{Array1, Array2, Array3};

    /// Deterministic pseudo-random values in [-1, 1) (no external RNG crate needed).
    pub(crate) fn lcg(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn arr2(r: usize, c: usize, seed: u64) -> Array2<f64> {
        Array2::from_shape_vec((r, c), lcg(r * c, seed)).unwrap()
    }

    fn score(vi: &Array2<f64>, vj: &Array2<f64>, gate: Option<&Array2<f64>>) -> Array1<f64> {
        let mut out = Array1::zeros(vi.nrows());
        preference_score(vi.view(), vj.view(), gate.map(|g| g.view()), out.view_mut()).unwrap();
        out
    }

    #[test]
    fn pair_score_analytic_values() {
        // k = 1: v_i = [1, 0], v_j = [0, 1] → 1·1 − 0·0 = 1; swapped → −1.
        let a = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        let b = Array2::from_shape_vec((1, 2), vec![0.0, 1.0]).unwrap();
        assert_eq!(score(&a, &b, None)[0], 1.0);
        assert_eq!(score(&b, &a, None)[0], -1.0);
        // k = 2: [1,2,3,4] vs [5,6,7,8]: blocks 1·6 − 2·5 = −4 and 3·8 − 4·7 = −4 → −8;
        // gate [0.5, 2] → 0.5·(−4) + 2·(−4) = −10.
        let a = Array2::from_shape_vec((1, 4), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Array2::from_shape_vec((1, 4), vec![5.0, 6.0, 7.0, 8.0]).unwrap();
        let g = Array2::from_shape_vec((1, 2), vec![0.5, 2.0]).unwrap();
        assert_eq!(score(&a, &b, None)[0], -8.0);
        assert_eq!(score(&a, &b, Some(&g))[0], -10.0);
    }

    #[test]
    fn skew_symmetry_is_exact() {
        let (a, b, g) = (arr2(97, 10, 1), arr2(97, 10, 2), arr2(97, 5, 3));
        let (s1, s2) = (score(&a, &b, Some(&g)), score(&b, &a, Some(&g)));
        assert!(s1.iter().zip(&s2).all(|(x, y)| *x == -*y));
        assert!(score(&a, &a, Some(&g)).iter().all(|x| *x == 0.0));
    }

    #[test]
    fn errors_name_the_argument() {
        let a = Array2::<f64>::zeros((3, 3));
        let mut out = Array1::zeros(3);
        let e = preference_score(a.view(), a.view(), None, out.view_mut()).unwrap_err();
        assert!(matches!(e, GpmError::Shape { arg: "v_i", .. }), "{e}");
        let (a, b) = (Array2::<f64>::zeros((3, 4)), Array2::<f64>::zeros((2, 4)));
        let e = preference_score(a.view(), b.view(), None, out.view_mut()).unwrap_err();
        assert!(e.to_string().starts_with("v_j: expected shape [3, 4]"), "{e}");
        let g = Array2::<f64>::zeros((3, 3));
        let e = preference_score(a.view(), a.view(), Some(g.view()), out.view_mut()).unwrap_err();
        assert!(matches!(e, GpmError::Shape { arg: "gate", .. }), "{e}");
    }

    /// Central finite difference of `sum(f(x) * w)` with respect to every element of `x`.
    pub(crate) fn fd_grad(x: &mut [f64], f: &mut dyn FnMut(&[f64]) -> f64) -> Vec<f64> {
        let h = 1e-6;
        (0..x.len())
            .map(|i| {
                let x0 = x[i];
                x[i] = x0 + h;
                let p = f(x);
                x[i] = x0 - h;
                let m = f(x);
                x[i] = x0;
                (p - m) / (2.0 * h)
            })
            .collect()
    }

    pub(crate) fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn pair_backward_matches_finite_differences() {
        let (n, d, k) = (5, 6, 3);
        let (a, b, g) = (arr2(n, d, 4), arr2(n, d, 5), arr2(n, k, 6));
        let w = Array1::from_vec(lcg(n, 7));
        let (mut ga, mut gb, mut gg) = (Array2::zeros((n, d)), Array2::zeros((n, d)), Array2::zeros((n, k)));
        preference_score_backward(
            w.view(),
            a.view(),
            b.view(),
            Some(g.view()),
            Some(ga.view_mut()),
            Some(gb.view_mut()),
            Some(gg.view_mut()),
        )
        .unwrap();
        let loss = |a: &Array2<f64>, b: &Array2<f64>, g: &Array2<f64>| score(a, b, Some(g)).dot(&w);
        let mut x = a.as_slice().unwrap().to_vec();
        let fa = fd_grad(&mut x, &mut |x| loss(&Array2::from_shape_vec((n, d), x.to_vec()).unwrap(), &b, &g));
        assert_close(ga.as_slice().unwrap(), &fa, 1e-7);
        let mut x = b.as_slice().unwrap().to_vec();
        let fb = fd_grad(&mut x, &mut |x| loss(&a, &Array2::from_shape_vec((n, d), x.to_vec()).unwrap(), &g));
        assert_close(gb.as_slice().unwrap(), &fb, 1e-7);
        let mut x = g.as_slice().unwrap().to_vec();
        let fg = fd_grad(&mut x, &mut |x| loss(&a, &b, &Array2::from_shape_vec((n, k), x.to_vec()).unwrap()));
        assert_close(gg.as_slice().unwrap(), &fg, 1e-7);
    }

    fn matrix(v: &Array3<f64>, gate: Option<&Array2<f64>>) -> Array3<f64> {
        let (p, kk, _) = v.dim();
        let mut out = Array3::zeros((p, kk, kk));
        preference_matrix(v.view(), gate.map(|g| g.view()), out.view_mut()).unwrap();
        out
    }

    #[test]
    fn matrix_matches_pair_scores_and_is_skew() {
        let (p, kk, d) = (3, 70, 4);
        let v = Array3::from_shape_vec((p, kk, d), lcg(p * kk * d, 8)).unwrap();
        let g = arr2(p, 2, 9).mapv(f64::abs);
        let m = matrix(&v, Some(&g));
        for pr in 0..p {
            for i in 0..kk {
                assert_eq!(m[[pr, i, i]], 0.0);
                for j in 0..kk {
                    assert_eq!(m[[pr, i, j]], -m[[pr, j, i]]);
                    let a = v.slice(ndarray::s![pr, i, ..]).to_vec();
                    let b = v.slice(ndarray::s![pr, j, ..]).to_vec();
                    let lam = g.row(pr).to_vec();
                    assert_eq!(m[[pr, i, j]], score_row(&a, &b, Some(&lam)));
                }
            }
        }
    }

    #[test]
    fn matrix_backward_matches_finite_differences() {
        let (p, kk, d) = (2, 5, 4);
        let v = Array3::from_shape_vec((p, kk, d), lcg(p * kk * d, 10)).unwrap();
        let g = arr2(p, 2, 11);
        let w = Array3::from_shape_vec((p, kk, kk), lcg(p * kk * kk, 12)).unwrap();
        let (mut gv, mut gg) = (Array3::zeros((p, kk, d)), Array2::zeros((p, 2)));
        preference_matrix_backward(w.view(), v.view(), Some(g.view()), Some(gv.view_mut()), Some(gg.view_mut()))
            .unwrap();
        let mut x = v.as_slice().unwrap().to_vec();
        let fv = fd_grad(&mut x, &mut |x| {
            (matrix(&Array3::from_shape_vec((p, kk, d), x.to_vec()).unwrap(), Some(&g)) * &w).sum()
        });
        assert_close(gv.as_slice().unwrap(), &fv, 1e-7);
        let mut x = g.as_slice().unwrap().to_vec();
        let fg = fd_grad(&mut x, &mut |x| {
            (matrix(&v, Some(&Array2::from_shape_vec((p, 2), x.to_vec()).unwrap())) * &w).sum()
        });
        assert_close(gg.as_slice().unwrap(), &fg, 1e-7);
    }

    fn win(v: &Array3<f64>, w: Option<&Array2<f64>>, g: Option<&Array2<f64>>) -> Array2<f64> {
        let (p, kk, _) = v.dim();
        let mut out = Array2::zeros((p, kk));
        win_score(v.view(), w.map(|w| w.view()), g.map(|g| g.view()), out.view_mut()).unwrap();
        out
    }

    #[test]
    fn win_score_is_the_weighted_row_sum_of_the_matrix() {
        // ŝ_i = Σ_j w_j M[i, j]; with uniform weights the mean of row i.
        let (p, kk, d) = (4, 6, 6);
        let v = Array3::from_shape_vec((p, kk, d), lcg(p * kk * d, 13)).unwrap();
        let g = arr2(p, 3, 14);
        let w = arr2(p, kk, 15);
        let m = matrix(&v, Some(&g));
        let s = win(&v, Some(&w), Some(&g));
        let u = win(&v, None, Some(&g));
        for pr in 0..p {
            for i in 0..kk {
                let want: f64 = (0..kk).map(|j| w[[pr, j]] * m[[pr, i, j]]).sum();
                assert!((s[[pr, i]] - want).abs() < 1e-12);
                let mean: f64 = (0..kk).map(|j| m[[pr, i, j]]).sum::<f64>() / kk as f64;
                assert!((u[[pr, i]] - mean).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn win_backward_matches_finite_differences() {
        let (p, kk, d) = (3, 4, 4);
        let v = Array3::from_shape_vec((p, kk, d), lcg(p * kk * d, 16)).unwrap();
        let (g, w, up) = (arr2(p, 2, 17), arr2(p, kk, 18), arr2(p, kk, 19));
        let (mut gv, mut gw, mut gg) = (Array3::zeros((p, kk, d)), Array2::zeros((p, kk)), Array2::zeros((p, 2)));
        win_score_backward(
            up.view(),
            v.view(),
            Some(w.view()),
            Some(g.view()),
            Some(gv.view_mut()),
            Some(gw.view_mut()),
            Some(gg.view_mut()),
        )
        .unwrap();
        let mut x = v.as_slice().unwrap().to_vec();
        let fv = fd_grad(&mut x, &mut |x| {
            (win(&Array3::from_shape_vec((p, kk, d), x.to_vec()).unwrap(), Some(&w), Some(&g)) * &up).sum()
        });
        assert_close(gv.as_slice().unwrap(), &fv, 1e-7);
        let mut x = w.as_slice().unwrap().to_vec();
        let fw = fd_grad(&mut x, &mut |x| {
            (win(&v, Some(&Array2::from_shape_vec((p, kk), x.to_vec()).unwrap()), Some(&g)) * &up).sum()
        });
        assert_close(gw.as_slice().unwrap(), &fw, 1e-7);
        let mut x = g.as_slice().unwrap().to_vec();
        let fg = fd_grad(&mut x, &mut |x| {
            (win(&v, Some(&w), Some(&Array2::from_shape_vec((p, 2), x.to_vec()).unwrap())) * &up).sum()
        });
        assert_close(gg.as_slice().unwrap(), &fg, 1e-7);
        // uniform weights: gradient w.r.t. v only
        let mut gv2 = Array3::zeros((p, kk, d));
        win_score_backward(up.view(), v.view(), None, None, Some(gv2.view_mut()), None, None).unwrap();
        let mut x = v.as_slice().unwrap().to_vec();
        let fv = fd_grad(&mut x, &mut |x| {
            (win(&Array3::from_shape_vec((p, kk, d), x.to_vec()).unwrap(), None, None) * &up).sum()
        });
        assert_close(gv2.as_slice().unwrap(), &fv, 1e-7);
    }

    #[test]
    fn strided_inputs_give_the_same_result() {
        // A transposed (column-major) view goes through the same kernel as its contiguous copy.
        let (a, b) = (arr2(20, 8, 20), arr2(8, 20, 21));
        let b_t = b.t();
        let b_c = b_t.as_standard_layout().to_owned();
        let mut out = Array1::zeros(20);
        preference_score(a.view(), b_t, None, out.view_mut()).unwrap();
        assert_eq!(out, score(&a, &b_c, None));
    }

    #[test]
    fn same_bits_for_one_and_many_threads() {
        let (n, d) = (3 * PAIR_CHUNK + 17, 8);
        let (a, b, g) =
            (arr2(n, d, 22).mapv(|x| x as f32), arr2(n, d, 23).mapv(|x| x as f32), arr2(n, 4, 24).mapv(|x| x as f32));
        let run = |threads| {
            set_num_threads(threads);
            let mut out = Array1::<f32>::zeros(n);
            preference_score(a.view(), b.view(), Some(g.view()), out.view_mut()).unwrap();
            out
        };
        let one = run(1);
        let many = run(3);
        set_num_threads(0);
        assert!(one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
