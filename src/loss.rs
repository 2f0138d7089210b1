//! Fused losses: the score, the loss, its reduction and its gradient in one pass over the data.
//!
//! Every loss kernel writes the loss (`[N]` for `Reduction::None`, `[1]` otherwise) and, into the
//! optional gradient buffers it is given, the gradient of that (reduced) loss for a unit upstream
//! gradient: for `Mean` already scaled by `1/N`. Per-pair terms are summed in `f64` within fixed chunks
//! and the chunk sums are added in chunk order, so the result is the same for any thread count.
//!
//! - GPM / BT (paper Eq. A.1): `z = (s − m)/τ`, `ℓ = −[p log σ(z) + (1−p) log σ(−z)] = softplus(−z) + (1−p)·z`,
//!   `∂ℓ/∂s = (σ(z) − p)/τ`, `∂ℓ/∂m = −∂ℓ/∂s`, `∂ℓ/∂p = −z`. Hard label (p = 1) when no label is given.
//! - GPO (Eq. 5.3, log Z = 0) and SPPO: `r = (logπ − logπ_ref)·|y|^{−γ}`, `t = clamp((ŝ − c₀)/β, ±c)`,
//!   `ℓ = (r − t)²`; SPPO is `c₀ = ½` with `ŝ` the win probability, GPO is `c₀ = 0`.

use crate::error::{GpmError, Result};
use crate::parallel::{map_ordered, n_chunks, split_opt};
use crate::score::{
    by_width, check_dims, check_width, contiguous, out_slice, score_row, score_row_backward, width, PAIR_CHUNK,
};
use crate::{cast, Real};
use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};
use std::str::FromStr;

/// How per-pair losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    None,
    Mean,
    Sum,
}

impl FromStr for Reduction {
    type Err = GpmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Reduction::None),
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            other => Err(GpmError::value("reduction", "one of 'none', 'mean', 'sum'", format!("{other:?}"))),
        }
    }
}

impl Reduction {
    /// Scale of each element's gradient: `1/N` for the mean, 1 otherwise.
    fn scale(self, n: usize) -> f64 {
        match self {
            Reduction::Mean => 1.0 / n as f64,
            _ => 1.0,
        }
    }

    fn finish(self, sum: f64, n: usize) -> f64 {
        match self {
            Reduction::Mean => sum / n as f64,
            _ => sum,
        }
    }
}

fn check_positive(arg: &'static str, x: f64) -> Result<()> {
    if !(x > 0.0 && x.is_finite()) {
        return Err(GpmError::value(arg, "a finite number > 0", format!("{x}")));
    }
    Ok(())
}

fn check_vec<F: Real>(arg: &'static str, a: &Option<ArrayView1<F>>, n: usize) -> Result<()> {
    if let Some(a) = a {
        check_dims(arg, a.shape(), &[n], "one value per pair")?;
    }
    Ok(())
}

fn check_loss_out<F: Real>(loss: &ArrayViewMut1<F>, n: usize, red: Reduction) -> Result<()> {
    let want = if red == Reduction::None { n } else { 1 };
    check_dims("loss", loss.shape(), &[want], "[N] for reduction='none', [1] otherwise")
}

/// Rows per tile of the pair-loss loop: scores for a tile first, then the element-wise logistic part
/// in a loop LLVM vectorises, then the gradient rows.
const TILE: usize = 64;

/// `(softplus(−z), σ(−z))` from one `e^{−|z|}`: `softplus(−z) = max(−z, 0) + ln(1 + e^{−|z|})`,
/// `σ(−z) = e^{−|z|}/(1 + e^{−|z|})` for `z ≥ 0` and `1/(1 + e^{−|z|})` otherwise. No overflow anywhere.
#[inline(always)]
fn softplus_sigmoid_neg<F: Real>(z: F) -> (F, F) {
    let e = z.exp_neg_abs();
    let inv = F::one() / (F::one() + e);
    let sig = if z >= F::zero() { e * inv } else { inv };
    let relu = if z < F::zero() { -z } else { F::zero() }; // a select; NaN still propagates through e
    (relu + e.ln_1p_unit(), sig)
}

// ---------------------------------------------------------------------------------------------------
// pairwise logistic losses (GPM and BT share everything but the score)

/// Where a pair's score comes from, and how its gradient flows back.
trait PairScorer<F: Real>: Sync {
    /// Widths of one row of the chosen/rejected gradient and of the gate gradient.
    fn widths(&self) -> (usize, usize);
    fn score(&self, r: usize) -> F;
    fn backward(&self, r: usize, g: F, gc: Option<&mut [F]>, gr: Option<&mut [F]>, gg: Option<&mut [F]>);
}

/// GPM scores of embedding pairs; `D` is the compile-time width (0 = `d`, see `score::by_width`).
struct GpmScorer<'a, F, const D: usize> {
    vc: &'a [F],
    vr: &'a [F],
    gate: Option<&'a [F]>,
    d: usize,
}

impl<F: Real, const D: usize> PairScorer<F> for GpmScorer<'_, F, D> {
    fn widths(&self) -> (usize, usize) {
        let d = width::<D>(self.d);
        (d, d / 2)
    }
    #[inline(always)]
    fn score(&self, r: usize) -> F {
        let d = width::<D>(self.d);
        let k = d / 2;
        score_row(&self.vc[r * d..(r + 1) * d], &self.vr[r * d..(r + 1) * d], self.gate.map(|g| &g[r * k..(r + 1) * k]))
    }
    #[inline(always)]
    fn backward(&self, r: usize, g: F, gc: Option<&mut [F]>, gr: Option<&mut [F]>, gg: Option<&mut [F]>) {
        let d = width::<D>(self.d);
        let k = d / 2;
        score_row_backward(
            g,
            &self.vc[r * d..(r + 1) * d],
            &self.vr[r * d..(r + 1) * d],
            self.gate.map(|x| &x[r * k..(r + 1) * k]),
            gc,
            gr,
            gg,
        );
    }
}

struct BtScorer<'a, F> {
    rc: &'a [F],
    rr: &'a [F],
}

impl<F: Real> PairScorer<F> for BtScorer<'_, F> {
    fn widths(&self) -> (usize, usize) {
        (1, 0)
    }
    #[inline(always)]
    fn score(&self, r: usize) -> F {
        self.rc[r] - self.rr[r]
    }
    #[inline(always)]
    fn backward(&self, _r: usize, g: F, gc: Option<&mut [F]>, gr: Option<&mut [F]>, _gg: Option<&mut [F]>) {
        if let Some(gc) = gc {
            gc[0] = g;
        }
        if let Some(gr) = gr {
            gr[0] = -g;
        }
    }
}

/// Optional outputs of a pairwise loss.
pub struct PairLossGrads<'a, F> {
    /// `∂loss/∂s` per pair (scaled like every gradient), for callers that chain the score backward.
    pub coef: Option<ArrayViewMut1<'a, F>>,
    /// Gradient w.r.t. the chosen side (`[N, D]` for GPM, `[N]` for BT).
    pub chosen: Option<ArrayViewMut2<'a, F>>,
    pub rejected: Option<ArrayViewMut2<'a, F>>,
    pub gate: Option<ArrayViewMut2<'a, F>>,
    pub margin: Option<ArrayViewMut1<'a, F>>,
    pub label: Option<ArrayViewMut1<'a, F>>,
}

impl<F> Default for PairLossGrads<'_, F> {
    fn default() -> Self {
        PairLossGrads { coef: None, chosen: None, rejected: None, gate: None, margin: None, label: None }
    }
}

fn pair_loss_core<F: Real, S: PairScorer<F>>(
    n: usize,
    scorer: &S,
    inputs: PairInputs<'_, F>,
    loss: &mut [F],
    grads: PairLossGrads<'_, F>,
) -> Result<()> {
    let PairInputs { margin, label, tau, reduction: red } = inputs;
    let (dw, kw) = scorer.widths();
    let nc = n_chunks(n, PAIR_CHUNK);
    let per_elem = red == Reduction::None;
    let loss_chunks = split_opt(if per_elem { Some(&mut loss[..]) } else { None }, PAIR_CHUNK, nc);
    let coef = split_opt(out_slice("coef", grads.coef)?, PAIR_CHUNK, nc);
    let gc = split_opt(out_slice("grad_chosen", grads.chosen)?, PAIR_CHUNK * dw, nc);
    let gr = split_opt(out_slice("grad_rejected", grads.rejected)?, PAIR_CHUNK * dw, nc);
    let gg = split_opt(out_slice("grad_gate", grads.gate)?, PAIR_CHUNK * kw, nc);
    let gm = split_opt(out_slice("grad_margin", grads.margin)?, PAIR_CHUNK, nc);
    let gl = split_opt(out_slice("grad_label", grads.label)?, PAIR_CHUNK, nc);
    let need_s_grad = grads_needed(&gc) || grads_needed(&gr) || grads_needed(&gg);
    let items: Vec<_> = loss_chunks.into_iter().zip(coef).zip(gc).zip(gr).zip(gg).zip(gm).zip(gl).collect();
    let tau_f: F = cast(tau);
    let scale: F = cast(red.scale(n));
    let partials = map_ordered(items, |c, ((((((mut lo, mut co), mut gc), mut gr), mut gg), mut gm), mut gl)| {
        let r0 = c * PAIR_CHUNK;
        let rows = (n - r0).min(PAIR_CHUNK);
        let mut acc = 0.0f64;
        let (mut zb, mut lb, mut cb) = ([F::zero(); TILE], [F::zero(); TILE], [F::zero(); TILE]);
        for t0 in (0..rows).step_by(TILE) {
            let m = (rows - t0).min(TILE);
            let rr = r0 + t0..r0 + t0 + m; // global rows of this tile
                                           // 1. scores → z = (s − m)/τ
            for (t, z) in zb[..m].iter_mut().enumerate() {
                *z = scorer.score(rr.start + t);
            }
            match margin {
                Some(mg) => zb[..m].iter_mut().zip(&mg[rr.clone()]).for_each(|(z, &m)| *z = (*z - m) / tau_f),
                None => zb[..m].iter_mut().for_each(|z| *z = *z / tau_f),
            }
            // 2. ℓ and ∂ℓ/∂s, element-wise (vectorised)
            match label {
                None => {
                    for ((&z, l), cf) in zb[..m].iter().zip(&mut lb[..m]).zip(&mut cb[..m]) {
                        let (sp, sig) = softplus_sigmoid_neg(z);
                        *l = sp;
                        *cf = -sig / tau_f * scale;
                    }
                }
                Some(p) => {
                    for (((&z, &p), l), cf) in zb[..m].iter().zip(&p[rr.clone()]).zip(&mut lb[..m]).zip(&mut cb[..m]) {
                        let (sp, sig) = softplus_sigmoid_neg(z);
                        *l = sp + (F::one() - p) * z;
                        *cf = ((F::one() - sig) - p) / tau_f * scale;
                    }
                }
            }
            match lo.as_deref_mut() {
                Some(lo) => lo[t0..t0 + m].copy_from_slice(&lb[..m]),
                None => acc += lb[..m].iter().fold(0.0f64, |a, &l| a + l.to_f64().unwrap_or(f64::NAN)),
            }
            // 3. gradient rows
            if let Some(co) = co.as_deref_mut() {
                co[t0..t0 + m].copy_from_slice(&cb[..m]);
            }
            if let Some(gm) = gm.as_deref_mut() {
                gm[t0..t0 + m].iter_mut().zip(&cb[..m]).for_each(|(g, &cf)| *g = -cf);
            }
            if let Some(gl) = gl.as_deref_mut() {
                gl[t0..t0 + m].iter_mut().zip(&zb[..m]).for_each(|(g, &z)| *g = -z * scale);
            }
            if need_s_grad {
                for (t, &cf) in cb[..m].iter().enumerate() {
                    let (tt, r) = (t0 + t, rr.start + t);
                    scorer.backward(
                        r,
                        cf,
                        gc.as_deref_mut().map(|s| &mut s[tt * dw..(tt + 1) * dw]),
                        gr.as_deref_mut().map(|s| &mut s[tt * dw..(tt + 1) * dw]),
                        gg.as_deref_mut().map(|s| &mut s[tt * kw..(tt + 1) * kw]),
                    );
                }
            }
        }
        acc
    });
    if !per_elem {
        let sum = partials.iter().fold(0.0f64, |a, &b| a + b);
        loss[0] = cast(red.finish(sum, n));
    }
    Ok(())
}

fn grads_needed<T>(chunks: &[Option<T>]) -> bool {
    chunks.iter().any(Option::is_some)
}

fn check_pair_grads<F: Real>(g: &PairLossGrads<'_, F>, n: usize, d: usize, k: Option<usize>) -> Result<()> {
    for (arg, a) in [("coef", &g.coef), ("grad_margin", &g.margin), ("grad_label", &g.label)] {
        if let Some(a) = a {
            check_dims(arg, a.shape(), &[n], "one value per pair")?;
        }
    }
    for (arg, a) in [("grad_chosen", &g.chosen), ("grad_rejected", &g.rejected)] {
        if let Some(a) = a {
            check_dims(arg, a.shape(), &[n, d], "same as the inputs")?;
        }
    }
    match (&g.gate, k) {
        (Some(_), None) => return Err(GpmError::value("grad_gate", "None when no gate is given", "an output buffer")),
        (Some(a), Some(k)) => check_dims("grad_gate", a.shape(), &[n, k], "same as gate")?,
        _ => {}
    }
    Ok(())
}

/// GPM loss over pairs (`v_chosen`, `v_rejected: [N, D]`, `gate: [N, k]`), fused with its gradient.
#[allow(clippy::too_many_arguments)]
pub fn gpm_loss<F: Real>(
    v_chosen: ArrayView2<F>,
    v_rejected: ArrayView2<F>,
    gate: Option<ArrayView2<F>>,
    margin: Option<ArrayView1<F>>,
    label: Option<ArrayView1<F>>,
    tau: f64,
    reduction: Reduction,
    loss: ArrayViewMut1<F>,
    grads: PairLossGrads<'_, F>,
) -> Result<()> {
    let (n, d) = v_chosen.dim();
    let k = check_width("v_chosen", d)?;
    check_dims("v_rejected", v_rejected.shape(), &[n, d], "same as v_chosen")?;
    if let Some(g) = &gate {
        check_dims("gate", g.shape(), &[n, k], "one gate row of width k per pair")?;
    }
    check_vec("margin", &margin, n)?;
    check_vec("label", &label, n)?;
    check_positive("tau", tau)?;
    check_loss_out(&loss, n, reduction)?;
    check_pair_grads(&grads, n, d, gate.as_ref().map(|_| k))?;
    let (vc, vr) = (contiguous(v_chosen), contiguous(v_rejected));
    let gate = gate.map(contiguous);
    let (margin, label) = (margin.map(contiguous), label.map(contiguous));
    let loss = out_slice("loss", Some(loss))?.expect("given");
    let inputs = PairInputs {
        margin: margin.as_ref().and_then(|m| m.as_slice()),
        label: label.as_ref().and_then(|m| m.as_slice()),
        tau,
        reduction,
    };
    let (vc, vr) = (vc.as_slice().expect("contiguous"), vr.as_slice().expect("contiguous"));
    let gate = gate.as_ref().map(|g| g.as_slice().expect("contiguous"));
    by_width!(d, gpm_pairs::<F>(n, vc, vr, gate, d, inputs, loss, grads))
}

/// Margin, label and parameters shared by the pairwise losses.
struct PairInputs<'a, F> {
    margin: Option<&'a [F]>,
    label: Option<&'a [F]>,
    tau: f64,
    reduction: Reduction,
}

#[allow(clippy::too_many_arguments)]
fn gpm_pairs<F: Real, const D: usize>(
    n: usize,
    vc: &[F],
    vr: &[F],
    gate: Option<&[F]>,
    d: usize,
    inputs: PairInputs<'_, F>,
    loss: &mut [F],
    grads: PairLossGrads<'_, F>,
) -> Result<()> {
    let scorer: GpmScorer<'_, F, D> = GpmScorer { vc, vr, gate, d };
    pair_loss_core(n, &scorer, inputs, loss, grads)
}

/// Bradley-Terry loss over pairs of scalar rewards (`r_chosen`, `r_rejected: [N]`), fused with its
/// gradient. `grads.chosen`/`grads.rejected` are `[N, 1]` views; `grads.gate` must be `None`.
#[allow(clippy::too_many_arguments)]
pub fn bt_loss<F: Real>(
    r_chosen: ArrayView1<F>,
    r_rejected: ArrayView1<F>,
    margin: Option<ArrayView1<F>>,
    label: Option<ArrayView1<F>>,
    tau: f64,
    reduction: Reduction,
    loss: ArrayViewMut1<F>,
    grads: PairLossGrads<'_, F>,
) -> Result<()> {
    let n = r_chosen.len();
    check_dims("r_rejected", r_rejected.shape(), &[n], "same as r_chosen")?;
    check_vec("margin", &margin, n)?;
    check_vec("label", &label, n)?;
    check_positive("tau", tau)?;
    check_loss_out(&loss, n, reduction)?;
    check_pair_grads(&grads, n, 1, None)?;
    let (rc, rr) = (contiguous(r_chosen), contiguous(r_rejected));
    let (margin, label) = (margin.map(contiguous), label.map(contiguous));
    let scorer = BtScorer { rc: rc.as_slice().expect("contiguous"), rr: rr.as_slice().expect("contiguous") };
    let loss = out_slice("loss", Some(loss))?.expect("given");
    let inputs = PairInputs {
        margin: margin.as_ref().and_then(|m| m.as_slice()),
        label: label.as_ref().and_then(|m| m.as_slice()),
        tau,
        reduction,
    };
    pair_loss_core(n, &scorer, inputs, loss, grads)
}

// ---------------------------------------------------------------------------------------------------
// policy losses (GPO, SPPO)

/// Parameters of the squared policy loss `((logπ − logπ_ref)·|y|^{−γ} − clamp((ŝ − offset)/β, ±clamp))²`.
#[derive(Debug, Clone, Copy)]
pub struct PolicyLossParams {
    pub beta: f64,
    /// Subtracted from the target before dividing by β: 0 for GPO (scores), ½ for SPPO (probabilities).
    pub offset: f64,
    pub gamma: f64,
    pub clamp: Option<f64>,
    pub reduction: Reduction,
}

/// Optional gradient outputs of [`policy_loss`], each `[N]`.
#[derive(Default)]
pub struct PolicyLossGrads<'a, F> {
    pub logp: Option<ArrayViewMut1<'a, F>>,
    pub ref_logp: Option<ArrayViewMut1<'a, F>>,
    pub target: Option<ArrayViewMut1<'a, F>>,
    pub lengths: Option<ArrayViewMut1<'a, F>>,
}

/// GPO / SPPO squared loss over `N` sampled responses, fused with its gradient.
pub fn policy_loss<F: Real>(
    logp: ArrayView1<F>,
    ref_logp: ArrayView1<F>,
    target: ArrayView1<F>,
    lengths: Option<ArrayView1<F>>,
    params: PolicyLossParams,
    loss: ArrayViewMut1<F>,
    grads: PolicyLossGrads<'_, F>,
) -> Result<()> {
    let n = logp.len();
    check_dims("ref_logp", ref_logp.shape(), &[n], "same as logp")?;
    check_dims("target", target.shape(), &[n], "same as logp")?;
    check_vec("lengths", &lengths, n)?;
    check_positive("beta", params.beta)?;
    if let Some(c) = params.clamp {
        if c.is_nan() || c < 0.0 {
            return Err(GpmError::value("clamp", "None or a number >= 0", format!("{c}")));
        }
    }
    if !params.gamma.is_finite() {
        return Err(GpmError::value("gamma", "a finite number", format!("{}", params.gamma)));
    }
    if grads.lengths.is_some() && lengths.is_none() {
        return Err(GpmError::value("grad_lengths", "None when no lengths are given", "an output buffer"));
    }
    let red = params.reduction;
    check_loss_out(&loss, n, red)?;
    for (arg, a) in [
        ("grad_logp", &grads.logp),
        ("grad_ref_logp", &grads.ref_logp),
        ("grad_target", &grads.target),
        ("grad_lengths", &grads.lengths),
    ] {
        if let Some(a) = a {
            check_dims(arg, a.shape(), &[n], "one value per response")?;
        }
    }
    let (lp, rl, tg) = (contiguous(logp), contiguous(ref_logp), contiguous(target));
    let ln = lengths.map(contiguous);
    let (lp, rl, tg) =
        (lp.as_slice().expect("contiguous"), rl.as_slice().expect("contiguous"), tg.as_slice().expect("contiguous"));
    let ln = ln.as_ref().map(|a| a.as_slice().expect("contiguous"));
    let loss = out_slice("loss", Some(loss))?.expect("given");
    let per_elem = red == Reduction::None;
    let nc = n_chunks(n, PAIR_CHUNK);
    let lo = split_opt(if per_elem { Some(&mut loss[..]) } else { None }, PAIR_CHUNK, nc);
    let g1 = split_opt(out_slice("grad_logp", grads.logp)?, PAIR_CHUNK, nc);
    let g2 = split_opt(out_slice("grad_ref_logp", grads.ref_logp)?, PAIR_CHUNK, nc);
    let g3 = split_opt(out_slice("grad_target", grads.target)?, PAIR_CHUNK, nc);
    let g4 = split_opt(out_slice("grad_lengths", grads.lengths)?, PAIR_CHUNK, nc);
    let items: Vec<_> = lo.into_iter().zip(g1).zip(g2).zip(g3).zip(g4).collect();
    let (beta, offset, gamma): (F, F, F) = (cast(params.beta), cast(params.offset), cast(params.gamma));
    let clamp: Option<F> = params.clamp.map(cast);
    let scale: F = cast(red.scale(n));
    let two: F = cast(2.0);
    let use_len = ln.is_some() && params.gamma != 0.0;
    let partials = map_ordered(items, |c, ((((mut lo, mut g1), mut g2), mut g3), mut g4)| {
        let r0 = c * PAIR_CHUNK;
        let rows = (n - r0).min(PAIR_CHUNK);
        let mut acc = 0.0f64;
        for t in 0..rows {
            let r = r0 + t;
            let delta = lp[r] - rl[r];
            let norm = match ln {
                Some(ln) if use_len => ln[r].powf(-gamma),
                _ => F::one(),
            };
            let raw = (tg[r] - offset) / beta;
            let (tgt, pass) = match clamp {
                Some(c) => (raw.max(-c).min(c), raw >= -c && raw <= c),
                None => (raw, true),
            };
            let e = delta * norm - tgt;
            let l = e * e;
            if let Some(lo) = lo.as_deref_mut() {
                lo[t] = l;
            } else {
                acc += l.to_f64().unwrap_or(f64::NAN);
            }
            let ge = two * e * scale;
            if let Some(g) = g1.as_deref_mut() {
                g[t] = ge * norm;
            }
            if let Some(g) = g2.as_deref_mut() {
                g[t] = -(ge * norm);
            }
            if let Some(g) = g3.as_deref_mut() {
                g[t] = if pass { -ge / beta } else { F::zero() };
            }
            if let Some(g) = g4.as_deref_mut() {
                // ∂(δ·len^{−γ})/∂len = −γ·δ·len^{−γ}/len
                g[t] = match ln {
                    Some(ln) if use_len => ge * (-gamma) * delta * norm / ln[r],
                    _ => F::zero(),
                };
            }
        }
        acc
    });
    if !per_elem {
        let sum = partials.iter().fold(0.0f64, |a, &b| a + b);
        loss[0] = cast(red.finish(sum, n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::set_num_threads;
    use crate::score::tests::{assert_close, fd_grad, lcg};
    use ndarray::{Array1, Array2};

    fn gpm(vc: &Array2<f64>, vr: &Array2<f64>, label: Option<&Array1<f64>>, tau: f64, red: Reduction) -> Array1<f64> {
        let n = vc.nrows();
        let mut loss = Array1::zeros(if red == Reduction::None { n } else { 1 });
        gpm_loss(
            vc.view(),
            vr.view(),
            None,
            None,
            label.map(|l| l.view()),
            tau,
            red,
            loss.view_mut(),
            PairLossGrads::default(),
        )
        .unwrap();
        loss
    }

    #[test]
    fn gpm_loss_analytic_values() {
        // s = 0 → ℓ = log 2 = 0.6931471805599453.
        let z = Array2::zeros((1, 2));
        assert!((gpm(&z, &z, None, 0.1, Reduction::Mean)[0] - std::f64::consts::LN_2).abs() < 1e-15);
        // v_c = [1, 0], v_r = [0, 0.1] → s = 0.1; τ = 0.1 → z = 1, ℓ = softplus(−1) = 0.31326168751822286.
        let a = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        let b = Array2::from_shape_vec((1, 2), vec![0.0, 0.1]).unwrap();
        assert!((gpm(&a, &b, None, 0.1, Reduction::Sum)[0] - 0.31326168751822286).abs() < 1e-12);
        // soft label p = 0.5: softplus(−1) + 0.5·1 = 0.8132616875182229.
        let half = Array1::from_vec(vec![0.5]);
        assert!((gpm(&a, &b, Some(&half), 0.1, Reduction::None)[0] - 0.8132616875182229).abs() < 1e-12);
        // very large margin of victory: no overflow, ℓ → 0; large defeat: ℓ ≈ −z.
        let big = Array2::from_shape_vec((1, 2), vec![1e4, 0.0]).unwrap();
        let one = Array2::from_shape_vec((1, 2), vec![0.0, 1.0]).unwrap();
        assert_eq!(gpm(&big, &one, None, 0.1, Reduction::Mean)[0], 0.0);
        assert!((gpm(&one, &big, None, 0.1, Reduction::Mean)[0] - 1e5).abs() < 1e-6);
    }

    #[test]
    fn gpm_loss_gradients_match_finite_differences() {
        let (n, d, k) = (7, 4, 2);
        let vc = Array2::from_shape_vec((n, d), lcg(n * d, 1)).unwrap();
        let vr = Array2::from_shape_vec((n, d), lcg(n * d, 2)).unwrap();
        let gate = Array2::from_shape_vec((n, k), lcg(n * k, 3)).unwrap();
        let margin = Array1::from_vec(lcg(n, 4)).mapv(|x| 0.1 * x);
        let label = Array1::from_vec(lcg(n, 5)).mapv(|x| 0.5 + 0.5 * x);
        let f = |vc: &[f64], vr: &[f64], g: &[f64], m: &[f64], l: &[f64]| {
            let mut loss = Array1::zeros(1);
            let a = |x: &[f64], c| Array2::from_shape_vec((n, c), x.to_vec()).unwrap();
            gpm_loss(
                a(vc, d).view(),
                a(vr, d).view(),
                Some(a(g, k).view()),
                Some(Array1::from_vec(m.to_vec()).view()),
                Some(Array1::from_vec(l.to_vec()).view()),
                0.3,
                Reduction::Mean,
                loss.view_mut(),
                PairLossGrads::default(),
            )
            .unwrap();
            loss[0]
        };
        let (mut gc, mut gr, mut gg) = (Array2::zeros((n, d)), Array2::zeros((n, d)), Array2::zeros((n, k)));
        let (mut gm, mut gl, mut loss) = (Array1::zeros(n), Array1::zeros(n), Array1::zeros(1));
        let grads = PairLossGrads {
            coef: None,
            chosen: Some(gc.view_mut()),
            rejected: Some(gr.view_mut()),
            gate: Some(gg.view_mut()),
            margin: Some(gm.view_mut()),
            label: Some(gl.view_mut()),
        };
        gpm_loss(
            vc.view(),
            vr.view(),
            Some(gate.view()),
            Some(margin.view()),
            Some(label.view()),
            0.3,
            Reduction::Mean,
            loss.view_mut(),
            grads,
        )
        .unwrap();
        let s = |a: &Array2<f64>| a.as_slice().unwrap().to_vec();
        let (c0, r0, g0, m0, l0) = (s(&vc), s(&vr), s(&gate), margin.to_vec(), label.to_vec());
        assert!((loss[0] - f(&c0, &r0, &g0, &m0, &l0)).abs() < 1e-15);
        assert_close(gc.as_slice().unwrap(), &fd_grad(&mut c0.clone(), &mut |x| f(x, &r0, &g0, &m0, &l0)), 1e-7);
        assert_close(gr.as_slice().unwrap(), &fd_grad(&mut r0.clone(), &mut |x| f(&c0, x, &g0, &m0, &l0)), 1e-7);
        assert_close(gg.as_slice().unwrap(), &fd_grad(&mut g0.clone(), &mut |x| f(&c0, &r0, x, &m0, &l0)), 1e-7);
        assert_close(gm.as_slice().unwrap(), &fd_grad(&mut m0.clone(), &mut |x| f(&c0, &r0, &g0, x, &l0)), 1e-7);
        assert_close(gl.as_slice().unwrap(), &fd_grad(&mut l0.clone(), &mut |x| f(&c0, &r0, &g0, &m0, x)), 1e-7);
    }

    #[test]
    fn bt_loss_is_gpm_with_scalar_rewards() {
        // r_c = 2, r_r = 1, τ = 1 → softplus(−1) = 0.31326168751822286, ∂/∂r_c = −σ(−1) = −0.2689414213699951.
        let (rc, rr) = (Array1::from_vec(vec![2.0f64]), Array1::from_vec(vec![1.0f64]));
        let (mut loss, mut gc, mut gr) = (Array1::zeros(1), Array2::zeros((1, 1)), Array2::zeros((1, 1)));
        let grads = PairLossGrads { chosen: Some(gc.view_mut()), rejected: Some(gr.view_mut()), ..Default::default() };
        bt_loss(rc.view(), rr.view(), None, None, 1.0, Reduction::Mean, loss.view_mut(), grads).unwrap();
        assert!((loss[0] - 0.31326168751822286).abs() < 1e-15);
        assert!((gc[[0, 0]] + 0.2689414213699951).abs() < 1e-15);
        assert_eq!(gr[[0, 0]], -gc[[0, 0]]);
    }

    fn policy(lp: f64, rl: f64, t: f64, len: Option<f64>, p: PolicyLossParams) -> (f64, f64, f64) {
        let (mut loss, mut g1, mut g3) = (Array1::zeros(1), Array1::zeros(1), Array1::zeros(1));
        let lens = len.map(|l| Array1::from_vec(vec![l]));
        let grads = PolicyLossGrads { logp: Some(g1.view_mut()), target: Some(g3.view_mut()), ..Default::default() };
        policy_loss(
            Array1::from_vec(vec![lp]).view(),
            Array1::from_vec(vec![rl]).view(),
            Array1::from_vec(vec![t]).view(),
            lens.as_ref().map(|l| l.view()),
            p,
            loss.view_mut(),
            grads,
        )
        .unwrap();
        (loss[0], g1[0], g3[0])
    }

    #[test]
    fn policy_loss_analytic_values() {
        let p = PolicyLossParams { beta: 1.0, offset: 0.0, gamma: 0.0, clamp: None, reduction: Reduction::Mean };
        // logπ − logπ_ref = 1, ŝ/β = 0.5 → (1 − 0.5)² = 0.25, ∂/∂logπ = 2·0.5 = 1, ∂/∂ŝ = −1.
        assert_eq!(policy(-1.0, -2.0, 0.5, None, p), (0.25, 1.0, -1.0));
        // γ = 1, |y| = 4 → (1/4 − 0.5)² = 0.0625.
        assert_eq!(policy(-1.0, -2.0, 0.5, Some(4.0), PolicyLossParams { gamma: 1.0, ..p }).0, 0.0625);
        // clamp 0.2: target 0.5 → 0.2, (1 − 0.2)² = 0.64 (to rounding) and no gradient to ŝ.
        let (l, _, gt) = policy(-1.0, -2.0, 0.5, None, PolicyLossParams { clamp: Some(0.2), ..p });
        assert!((l - 0.64).abs() < 1e-15);
        assert_eq!(gt, 0.0);
        // SPPO: P̂ = 0.75, β = 0.5 → target (0.75 − 0.5)/0.5 = 0.5 → 0.25.
        assert_eq!(policy(-1.0, -2.0, 0.75, None, PolicyLossParams { beta: 0.5, offset: 0.5, ..p }).0, 0.25);
    }

    #[test]
    fn policy_loss_gradients_match_finite_differences() {
        let n = 6;
        let (lp, rl, tg) = (lcg(n, 30), lcg(n, 31), lcg(n, 32));
        let ln: Vec<f64> = lcg(n, 33).iter().map(|x| 3.0 + 2.0 * x).collect();
        let p = PolicyLossParams { beta: 0.7, offset: 0.0, gamma: 1.0, clamp: Some(1.0), reduction: Reduction::Sum };
        let f = |a: &[f64], b: &[f64], c: &[f64], l: &[f64]| {
            let mut loss = Array1::zeros(1);
            let v = |x: &[f64]| Array1::from_vec(x.to_vec());
            policy_loss(
                v(a).view(),
                v(b).view(),
                v(c).view(),
                Some(v(l).view()),
                p,
                loss.view_mut(),
                PolicyLossGrads::default(),
            )
            .unwrap();
            loss[0]
        };
        let mut g: [Array1<f64>; 4] = [Array1::zeros(n), Array1::zeros(n), Array1::zeros(n), Array1::zeros(n)];
        let [g1, g2, g3, g4] = &mut g;
        let grads = PolicyLossGrads {
            logp: Some(g1.view_mut()),
            ref_logp: Some(g2.view_mut()),
            target: Some(g3.view_mut()),
            lengths: Some(g4.view_mut()),
        };
        let v = |x: &[f64]| Array1::from_vec(x.to_vec());
        let mut loss = Array1::zeros(1);
        policy_loss(v(&lp).view(), v(&rl).view(), v(&tg).view(), Some(v(&ln).view()), p, loss.view_mut(), grads)
            .unwrap();
        assert_close(g[0].as_slice().unwrap(), &fd_grad(&mut lp.clone(), &mut |x| f(x, &rl, &tg, &ln)), 1e-7);
        assert_close(g[1].as_slice().unwrap(), &fd_grad(&mut rl.clone(), &mut |x| f(&lp, x, &tg, &ln)), 1e-7);
        assert_close(g[2].as_slice().unwrap(), &fd_grad(&mut tg.clone(), &mut |x| f(&lp, &rl, x, &ln)), 1e-7);
        assert_close(g[3].as_slice().unwrap(), &fd_grad(&mut ln.clone(), &mut |x| f(&lp, &rl, &tg, x)), 1e-7);
    }

    #[test]
    fn bad_parameters_are_errors() {
        let a = Array2::<f64>::zeros((2, 2));
        let mut loss = Array1::zeros(1);
        let e = gpm_loss(
            a.view(),
            a.view(),
            None,
            None,
            None,
            0.0,
            Reduction::Mean,
            loss.view_mut(),
            PairLossGrads::default(),
        )
        .unwrap_err();
        assert!(matches!(e, GpmError::Value { arg: "tau", .. }), "{e}");
        assert!("avg".parse::<Reduction>().is_err());
        let mut wrong = Array1::zeros(2);
        let e = gpm_loss(
            a.view(),
            a.view(),
            None,
            None,
            None,
            1.0,
            Reduction::Mean,
            wrong.view_mut(),
            PairLossGrads::default(),
        )
        .unwrap_err();
        assert!(matches!(e, GpmError::Shape { arg: "loss", .. }), "{e}");
    }

    #[test]
    fn empty_batches() {
        // mean of nothing is NaN (as torch.mean), sum of nothing is 0, 'none' is empty.
        let a = Array2::<f64>::zeros((0, 4));
        let mut loss = Array1::zeros(1);
        gpm_loss(a.view(), a.view(), None, None, None, 0.1, Reduction::Mean, loss.view_mut(), PairLossGrads::default())
            .unwrap();
        assert!(loss[0].is_nan());
        gpm_loss(a.view(), a.view(), None, None, None, 0.1, Reduction::Sum, loss.view_mut(), PairLossGrads::default())
            .unwrap();
        assert_eq!(loss[0], 0.0);
        let mut none = Array1::zeros(0);
        gpm_loss(a.view(), a.view(), None, None, None, 0.1, Reduction::None, none.view_mut(), PairLossGrads::default())
            .unwrap();
    }

    #[test]
    fn reduction_is_bitwise_deterministic_across_thread_counts() {
        let (n, d) = (5 * PAIR_CHUNK + 3, 8);
        let vc = Array2::from_shape_vec((n, d), lcg(n * d, 40)).unwrap().mapv(|x| x as f32);
        let vr = Array2::from_shape_vec((n, d), lcg(n * d, 41)).unwrap().mapv(|x| x as f32);
        let run = |t| {
            set_num_threads(t);
            let (mut loss, mut gc) = (Array1::<f32>::zeros(1), Array2::<f32>::zeros((n, d)));
            let grads = PairLossGrads { chosen: Some(gc.view_mut()), ..Default::default() };
            gpm_loss(vc.view(), vr.view(), None, None, None, 0.1, Reduction::Mean, loss.view_mut(), grads).unwrap();
            (loss[0].to_bits(), gc.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        };
        let (one, many) = (run(1), run(4));
        set_num_threads(0);
        assert_eq!(one, many);
    }
}
