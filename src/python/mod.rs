//! PyO3 bindings: check dtypes, borrow the numpy views (zero-copy over torch memory), release the GIL,
//! call the kernel, map errors. No math here.
//!
//! Every function writes into caller-allocated output arrays. Optional arrays are `None`.

use crate::error::GpmError;
use crate::loss::{self, PairLossGrads, PolicyLossGrads, PolicyLossParams, Reduction};
use crate::{game, parallel, score, Real};
use ndarray::Dimension;
use numpy::{Element, PyArrayDescrMethods, PyReadonlyArray, PyReadwriteArray, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use std::panic::{catch_unwind, AssertUnwindSafe};

mod batch;
mod cuda;

/// Raises the Python class `gpmkit.exceptions.<name>` with `msg`.
fn py_error(py: Python<'_>, name: &str, msg: String) -> PyErr {
    let cls = py.import("gpmkit.exceptions").and_then(|m| m.getattr(name)).and_then(|c| Ok(c.cast_into::<PyType>()?));
    match cls {
        Ok(cls) => PyErr::from_type(cls, msg),
        Err(_) => PyValueError::new_err(msg),
    }
}

fn map_err(py: Python<'_>, e: GpmError) -> PyErr {
    let name = match e {
        GpmError::Shape { .. } | GpmError::Layout { .. } => "ShapeError",
        GpmError::Value { .. } => "ArgumentError",
    };
    py_error(py, name, e.to_string())
}

/// Runs `f` without the GIL; a panic becomes `gpmkit.exceptions.GPMError` instead of unwinding into Python.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(map_err(py, e)),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(py_error(py, "GPMError", format!("internal error in the gpmkit Rust core (please report): {what}")))
        }
    }
}

#[derive(Clone, Copy)]
enum DType {
    F32,
    F64,
}

fn dtype_of(py: Python<'_>, obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<DType> {
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| py_error(py, "DTypeError", format!("{arg}: expected a numpy array, got {}", type_name(obj))))?;
    let dt = arr.dtype();
    if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(DType::F32)
    } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(DType::F64)
    } else {
        Err(py_error(py, "DTypeError", format!("{arg}: expected float32 or float64, got {dt}")))
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

fn check_array<'py, F: Element>(obj: &Bound<'py, PyAny>, arg: &str, ndim: usize) -> PyResult<()> {
    let py = obj.py();
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| py_error(py, "DTypeError", format!("{arg}: expected a numpy array, got {}", type_name(obj))))?;
    if arr.ndim() != ndim {
        return Err(py_error(
            py,
            "ShapeError",
            format!("{arg}: expected {ndim} dimensions, got shape {:?}", arr.shape()),
        ));
    }
    if !arr.dtype().is_equiv_to(&numpy::dtype::<F>(py)) {
        return Err(py_error(
            py,
            "DTypeError",
            format!("{arg}: expected {}, got {}", numpy::dtype::<F>(py), arr.dtype()),
        ));
    }
    Ok(())
}

fn ro<'py, F: Element, D: Dimension>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadonlyArray<'py, F, D>> {
    check_array::<F>(obj, arg, D::NDIM.unwrap_or(0))?;
    obj.extract().map_err(|e: PyErr| py_error(obj.py(), "ShapeError", format!("{arg}: {e}")))
}

fn opt_ro<'py, F: Element, D: Dimension>(
    obj: Option<&Bound<'py, PyAny>>,
    arg: &str,
) -> PyResult<Option<PyReadonlyArray<'py, F, D>>> {
    obj.filter(|o| !o.is_none()).map(|o| ro(o, arg)).transpose()
}

fn rw<'py, F: Element, D: Dimension>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadwriteArray<'py, F, D>> {
    check_array::<F>(obj, arg, D::NDIM.unwrap_or(0))?;
    obj.extract().map_err(|e: PyErr| py_error(obj.py(), "ShapeError", format!("{arg}: {e}")))
}

fn opt_rw<'py, F: Element, D: Dimension>(
    obj: Option<&Bound<'py, PyAny>>,
    arg: &str,
) -> PyResult<Option<PyReadwriteArray<'py, F, D>>> {
    obj.filter(|o| !o.is_none()).map(|o| rw(o, arg)).transpose()
}

fn reduction(py: Python<'_>, s: &str) -> PyResult<Reduction> {
    s.parse().map_err(|e| map_err(py, e))
}

/// Dispatches a generic implementation on the dtype of its first array argument.
macro_rules! by_dtype {
    ($py:expr, $probe:expr, $arg:literal, $f:ident($($a:expr),*)) => {
        match dtype_of($py, $probe, $arg)? {
            DType::F32 => $f::<f32>($($a),*),
            DType::F64 => $f::<f64>($($a),*),
        }
    };
}

/// A 1-D gradient buffer seen as the `[N, 1]` column the pair-loss kernel writes.
fn col<F>(x: ndarray::ArrayViewMut1<'_, F>) -> ndarray::ArrayViewMut2<'_, F> {
    let n = x.len();
    x.into_shape_with_order((n, 1)).expect("a 1-D view reshapes to a column")
}

type Ix1 = ndarray::Ix1;
type Ix2 = ndarray::Ix2;
type Ix3 = ndarray::Ix3;
type Arg<'a, 'py> = Option<&'a Bound<'py, PyAny>>;

// ---------------------------------------------------------------------------------------------------

fn score_fwd<F: Real + Element>(vi: &Bound<PyAny>, vj: &Bound<PyAny>, gate: Arg, out: &Bound<PyAny>) -> PyResult<()> {
    let (a, b) = (ro::<F, Ix2>(vi, "v_i")?, ro::<F, Ix2>(vj, "v_j")?);
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let mut o = rw::<F, Ix1>(out, "out")?;
    let (a, b, g, o) = (a.as_array(), b.as_array(), g.as_ref().map(|g| g.as_array()), o.as_array_mut());
    run(vi.py(), || score::preference_score(a, b, g, o))
}

/// Pair scores `out[n] = s(v_i[n] ≻ v_j[n])`.
#[pyfunction]
#[pyo3(signature = (v_i, v_j, gate, out))]
fn preference_score(
    py: Python<'_>,
    v_i: &Bound<PyAny>,
    v_j: &Bound<PyAny>,
    gate: Arg,
    out: &Bound<PyAny>,
) -> PyResult<()> {
    by_dtype!(py, v_i, "v_i", score_fwd(v_i, v_j, gate, out))
}

#[allow(clippy::too_many_arguments)]
fn score_bwd<F: Real + Element>(
    grad: &Bound<PyAny>,
    vi: &Bound<PyAny>,
    vj: &Bound<PyAny>,
    gate: Arg,
    gvi: Arg,
    gvj: Arg,
    ggate: Arg,
) -> PyResult<()> {
    let gr = ro::<F, Ix1>(grad, "grad")?;
    let (a, b) = (ro::<F, Ix2>(vi, "v_i")?, ro::<F, Ix2>(vj, "v_j")?);
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let (mut o1, mut o2, mut o3) =
        (opt_rw::<F, Ix2>(gvi, "grad_v_i")?, opt_rw::<F, Ix2>(gvj, "grad_v_j")?, opt_rw::<F, Ix2>(ggate, "grad_gate")?);
    let (gr, a, b, g) = (gr.as_array(), a.as_array(), b.as_array(), g.as_ref().map(|g| g.as_array()));
    let (o1, o2, o3) = (
        o1.as_mut().map(|x| x.as_array_mut()),
        o2.as_mut().map(|x| x.as_array_mut()),
        o3.as_mut().map(|x| x.as_array_mut()),
    );
    run(vi.py(), || score::preference_score_backward(gr, a, b, g, o1, o2, o3))
}

/// Backward of `preference_score` into the given gradient buffers (`None` = not needed).
#[pyfunction]
#[pyo3(signature = (grad, v_i, v_j, gate, grad_v_i, grad_v_j, grad_gate))]
#[allow(clippy::too_many_arguments)]
fn preference_score_backward(
    py: Python<'_>,
    grad: &Bound<PyAny>,
    v_i: &Bound<PyAny>,
    v_j: &Bound<PyAny>,
    gate: Arg,
    grad_v_i: Arg,
    grad_v_j: Arg,
    grad_gate: Arg,
) -> PyResult<()> {
    by_dtype!(py, v_i, "v_i", score_bwd(grad, v_i, v_j, gate, grad_v_i, grad_v_j, grad_gate))
}

fn matrix_fwd<F: Real + Element>(v: &Bound<PyAny>, gate: Arg, out: &Bound<PyAny>) -> PyResult<()> {
    let a = ro::<F, Ix3>(v, "v")?;
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let mut o = rw::<F, Ix3>(out, "out")?;
    let (a, g, o) = (a.as_array(), g.as_ref().map(|g| g.as_array()), o.as_array_mut());
    run(v.py(), || score::preference_matrix(a, g, o))
}

/// K×K score matrices `out[p, i, j] = s(v[p,i] ≻ v[p,j])`.
#[pyfunction]
#[pyo3(signature = (v, gate, out))]
fn preference_matrix(py: Python<'_>, v: &Bound<PyAny>, gate: Arg, out: &Bound<PyAny>) -> PyResult<()> {
    by_dtype!(py, v, "v", matrix_fwd(v, gate, out))
}

fn matrix_bwd<F: Real + Element>(grad: &Bound<PyAny>, v: &Bound<PyAny>, gate: Arg, gv: Arg, gg: Arg) -> PyResult<()> {
    let gr = ro::<F, Ix3>(grad, "grad")?;
    let a = ro::<F, Ix3>(v, "v")?;
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let (mut o1, mut o2) = (opt_rw::<F, Ix3>(gv, "grad_v")?, opt_rw::<F, Ix2>(gg, "grad_gate")?);
    let (gr, a, g) = (gr.as_array(), a.as_array(), g.as_ref().map(|g| g.as_array()));
    let (o1, o2) = (o1.as_mut().map(|x| x.as_array_mut()), o2.as_mut().map(|x| x.as_array_mut()));
    run(v.py(), || score::preference_matrix_backward(gr, a, g, o1, o2))
}

/// Backward of `preference_matrix`.
#[pyfunction]
#[pyo3(signature = (grad, v, gate, grad_v, grad_gate))]
fn preference_matrix_backward(
    py: Python<'_>,
    grad: &Bound<PyAny>,
    v: &Bound<PyAny>,
    gate: Arg,
    grad_v: Arg,
    grad_gate: Arg,
) -> PyResult<()> {
    by_dtype!(py, v, "v", matrix_bwd(grad, v, gate, grad_v, grad_gate))
}

fn win_fwd<F: Real + Element>(v: &Bound<PyAny>, w: Arg, gate: Arg, out: &Bound<PyAny>) -> PyResult<()> {
    let a = ro::<F, Ix3>(v, "v")?;
    let w = opt_ro::<F, Ix2>(w, "weights")?;
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let mut o = rw::<F, Ix2>(out, "out")?;
    let (a, w, g, o) =
        (a.as_array(), w.as_ref().map(|w| w.as_array()), g.as_ref().map(|g| g.as_array()), o.as_array_mut());
    run(v.py(), || score::win_score(a, w, g, o))
}

/// Population win scores `out[p, i] = Σ_j w[p,j] s(v[p,i] ≻ v[p,j])` in O(K·D).
#[pyfunction]
#[pyo3(signature = (v, weights, gate, out))]
fn win_score(py: Python<'_>, v: &Bound<PyAny>, weights: Arg, gate: Arg, out: &Bound<PyAny>) -> PyResult<()> {
    by_dtype!(py, v, "v", win_fwd(v, weights, gate, out))
}

#[allow(clippy::too_many_arguments)]
fn win_bwd<F: Real + Element>(
    grad: &Bound<PyAny>,
    v: &Bound<PyAny>,
    w: Arg,
    gate: Arg,
    gv: Arg,
    gw: Arg,
    gg: Arg,
) -> PyResult<()> {
    let gr = ro::<F, Ix2>(grad, "grad")?;
    let a = ro::<F, Ix3>(v, "v")?;
    let w = opt_ro::<F, Ix2>(w, "weights")?;
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let (mut o1, mut o2, mut o3) =
        (opt_rw::<F, Ix3>(gv, "grad_v")?, opt_rw::<F, Ix2>(gw, "grad_weights")?, opt_rw::<F, Ix2>(gg, "grad_gate")?);
    let (gr, a, w, g) =
        (gr.as_array(), a.as_array(), w.as_ref().map(|w| w.as_array()), g.as_ref().map(|g| g.as_array()));
    let (o1, o2, o3) = (
        o1.as_mut().map(|x| x.as_array_mut()),
        o2.as_mut().map(|x| x.as_array_mut()),
        o3.as_mut().map(|x| x.as_array_mut()),
    );
    run(v.py(), || score::win_score_backward(gr, a, w, g, o1, o2, o3))
}

/// Backward of `win_score`.
#[pyfunction]
#[pyo3(signature = (grad, v, weights, gate, grad_v, grad_weights, grad_gate))]
#[allow(clippy::too_many_arguments)]
fn win_score_backward(
    py: Python<'_>,
    grad: &Bound<PyAny>,
    v: &Bound<PyAny>,
    weights: Arg,
    gate: Arg,
    grad_v: Arg,
    grad_weights: Arg,
    grad_gate: Arg,
) -> PyResult<()> {
    by_dtype!(py, v, "v", win_bwd(grad, v, weights, gate, grad_v, grad_weights, grad_gate))
}

// ---------------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn gpm_loss_impl<F: Real + Element>(
    vc: &Bound<PyAny>,
    vr: &Bound<PyAny>,
    gate: Arg,
    margin: Arg,
    label: Arg,
    tau: f64,
    red: Reduction,
    loss: &Bound<PyAny>,
    outs: [Arg; 6],
) -> PyResult<()> {
    let (a, b) = (ro::<F, Ix2>(vc, "v_chosen")?, ro::<F, Ix2>(vr, "v_rejected")?);
    let g = opt_ro::<F, Ix2>(gate, "gate")?;
    let (m, l) = (opt_ro::<F, Ix1>(margin, "margin")?, opt_ro::<F, Ix1>(label, "label")?);
    let mut lo = rw::<F, Ix1>(loss, "loss")?;
    let [co, gc, gr, gg, gm, gl] = outs;
    let mut co = opt_rw::<F, Ix1>(co, "coef")?;
    let (mut gc, mut gr) = (opt_rw::<F, Ix2>(gc, "grad_chosen")?, opt_rw::<F, Ix2>(gr, "grad_rejected")?);
    let mut gg = opt_rw::<F, Ix2>(gg, "grad_gate")?;
    let (mut gm, mut gl) = (opt_rw::<F, Ix1>(gm, "grad_margin")?, opt_rw::<F, Ix1>(gl, "grad_label")?);
    let grads = PairLossGrads {
        coef: co.as_mut().map(|x| x.as_array_mut()),
        chosen: gc.as_mut().map(|x| x.as_array_mut()),
        rejected: gr.as_mut().map(|x| x.as_array_mut()),
        gate: gg.as_mut().map(|x| x.as_array_mut()),
        margin: gm.as_mut().map(|x| x.as_array_mut()),
        label: gl.as_mut().map(|x| x.as_array_mut()),
    };
    let (a, b, g) = (a.as_array(), b.as_array(), g.as_ref().map(|g| g.as_array()));
    let (m, l, lo) = (m.as_ref().map(|x| x.as_array()), l.as_ref().map(|x| x.as_array()), lo.as_array_mut());
    run(vc.py(), || loss::gpm_loss(a, b, g, m, l, tau, red, lo, grads))
}

/// Fused GPM loss (and, into the given buffers, its gradient for a unit upstream gradient).
#[pyfunction]
#[pyo3(signature = (v_chosen, v_rejected, gate, margin, label, tau, reduction, loss,
                    coef=None, grad_chosen=None, grad_rejected=None, grad_gate=None, grad_margin=None, grad_label=None))]
#[allow(clippy::too_many_arguments)]
fn gpm_loss(
    py: Python<'_>,
    v_chosen: &Bound<PyAny>,
    v_rejected: &Bound<PyAny>,
    gate: Arg,
    margin: Arg,
    label: Arg,
    tau: f64,
    reduction: &str,
    loss: &Bound<PyAny>,
    coef: Arg,
    grad_chosen: Arg,
    grad_rejected: Arg,
    grad_gate: Arg,
    grad_margin: Arg,
    grad_label: Arg,
) -> PyResult<()> {
    let red = self::reduction(py, reduction)?;
    let outs = [coef, grad_chosen, grad_rejected, grad_gate, grad_margin, grad_label];
    by_dtype!(py, v_chosen, "v_chosen", gpm_loss_impl(v_chosen, v_rejected, gate, margin, label, tau, red, loss, outs))
}

#[allow(clippy::too_many_arguments)]
fn bt_loss_impl<F: Real + Element>(
    rc: &Bound<PyAny>,
    rr: &Bound<PyAny>,
    margin: Arg,
    label: Arg,
    tau: f64,
    red: Reduction,
    loss: &Bound<PyAny>,
    outs: [Arg; 5],
) -> PyResult<()> {
    let (a, b) = (ro::<F, Ix1>(rc, "r_chosen")?, ro::<F, Ix1>(rr, "r_rejected")?);
    let (m, l) = (opt_ro::<F, Ix1>(margin, "margin")?, opt_ro::<F, Ix1>(label, "label")?);
    let mut lo = rw::<F, Ix1>(loss, "loss")?;
    let [co, gc, gr, gm, gl] = outs;
    let mut co = opt_rw::<F, Ix1>(co, "coef")?;
    let (mut gc, mut gr) = (opt_rw::<F, Ix1>(gc, "grad_chosen")?, opt_rw::<F, Ix1>(gr, "grad_rejected")?);
    let (mut gm, mut gl) = (opt_rw::<F, Ix1>(gm, "grad_margin")?, opt_rw::<F, Ix1>(gl, "grad_label")?);
    let grads = PairLossGrads {
        coef: co.as_mut().map(|x| x.as_array_mut()),
        chosen: gc.as_mut().map(|x| col(x.as_array_mut())),
        rejected: gr.as_mut().map(|x| col(x.as_array_mut())),
        gate: None,
        margin: gm.as_mut().map(|x| x.as_array_mut()),
        label: gl.as_mut().map(|x| x.as_array_mut()),
    };
    let (a, b) = (a.as_array(), b.as_array());
    let (m, l, lo) = (m.as_ref().map(|x| x.as_array()), l.as_ref().map(|x| x.as_array()), lo.as_array_mut());
    run(rc.py(), || loss::bt_loss(a, b, m, l, tau, red, lo, grads))
}

/// Fused Bradley-Terry loss on scalar rewards.
#[pyfunction]
#[pyo3(signature = (r_chosen, r_rejected, margin, label, tau, reduction, loss,
                    coef=None, grad_chosen=None, grad_rejected=None, grad_margin=None, grad_label=None))]
#[allow(clippy::too_many_arguments)]
fn bt_loss(
    py: Python<'_>,
    r_chosen: &Bound<PyAny>,
    r_rejected: &Bound<PyAny>,
    margin: Arg,
    label: Arg,
    tau: f64,
    reduction: &str,
    loss: &Bound<PyAny>,
    coef: Arg,
    grad_chosen: Arg,
    grad_rejected: Arg,
    grad_margin: Arg,
    grad_label: Arg,
) -> PyResult<()> {
    let red = self::reduction(py, reduction)?;
    let outs = [coef, grad_chosen, grad_rejected, grad_margin, grad_label];
    by_dtype!(py, r_chosen, "r_chosen", bt_loss_impl(r_chosen, r_rejected, margin, label, tau, red, loss, outs))
}

#[allow(clippy::too_many_arguments)]
fn policy_impl<F: Real + Element>(
    lp: &Bound<PyAny>,
    rl: &Bound<PyAny>,
    tg: &Bound<PyAny>,
    ln: Arg,
    params: PolicyLossParams,
    loss: &Bound<PyAny>,
    outs: [Arg; 4],
) -> PyResult<()> {
    let (a, b, c) = (ro::<F, Ix1>(lp, "logp")?, ro::<F, Ix1>(rl, "ref_logp")?, ro::<F, Ix1>(tg, "target")?);
    let l = opt_ro::<F, Ix1>(ln, "lengths")?;
    let mut lo = rw::<F, Ix1>(loss, "loss")?;
    let [g1, g2, g3, g4] = outs;
    let (mut g1, mut g2) = (opt_rw::<F, Ix1>(g1, "grad_logp")?, opt_rw::<F, Ix1>(g2, "grad_ref_logp")?);
    let (mut g3, mut g4) = (opt_rw::<F, Ix1>(g3, "grad_target")?, opt_rw::<F, Ix1>(g4, "grad_lengths")?);
    let grads = PolicyLossGrads {
        logp: g1.as_mut().map(|x| x.as_array_mut()),
        ref_logp: g2.as_mut().map(|x| x.as_array_mut()),
        target: g3.as_mut().map(|x| x.as_array_mut()),
        lengths: g4.as_mut().map(|x| x.as_array_mut()),
    };
    let (a, b, c, l, lo) =
        (a.as_array(), b.as_array(), c.as_array(), l.as_ref().map(|x| x.as_array()), lo.as_array_mut());
    run(lp.py(), || loss::policy_loss(a, b, c, l, params, lo, grads))
}

/// Fused GPO / SPPO squared policy loss `((logπ − logπ_ref)·|y|^{−γ} − clamp((target − offset)/β))²`.
#[pyfunction]
#[pyo3(signature = (logp, ref_logp, target, lengths, beta, offset, gamma, clamp, reduction, loss,
                    grad_logp=None, grad_ref_logp=None, grad_target=None, grad_lengths=None))]
#[allow(clippy::too_many_arguments)]
fn policy_loss(
    py: Python<'_>,
    logp: &Bound<PyAny>,
    ref_logp: &Bound<PyAny>,
    target: &Bound<PyAny>,
    lengths: Arg,
    beta: f64,
    offset: f64,
    gamma: f64,
    clamp: Option<f64>,
    reduction: &str,
    loss: &Bound<PyAny>,
    grad_logp: Arg,
    grad_ref_logp: Arg,
    grad_target: Arg,
    grad_lengths: Arg,
) -> PyResult<()> {
    let params = PolicyLossParams { beta, offset, gamma, clamp, reduction: self::reduction(py, reduction)? };
    let outs = [grad_logp, grad_ref_logp, grad_target, grad_lengths];
    by_dtype!(py, logp, "logp", policy_impl(logp, ref_logp, target, lengths, params, loss, outs))
}

// ---------------------------------------------------------------------------------------------------

/// Maximin mixed strategy (von Neumann winner) of the symmetric zero-sum game with skew-symmetric payoff
/// `a: [K, K]` (float64), written into `out: [K]`; returns the number of simplex pivots.
#[pyfunction]
#[pyo3(signature = (a, max_iter, out))]
fn maximin_strategy(py: Python<'_>, a: &Bound<PyAny>, max_iter: usize, out: &Bound<PyAny>) -> PyResult<usize> {
    let a = ro::<f64, Ix2>(a, "a")?;
    let mut o = rw::<f64, Ix1>(out, "out")?;
    let (a, mut o) = (a.as_array(), o.as_array_mut());
    if o.len() != a.nrows() {
        return Err(map_err(py, GpmError::shape("out", format!("[{}]", a.nrows()), format!("[{}]", o.len()))));
    }
    run(py, || {
        let (p, pivots) = game::maximin_strategy(a, max_iter)?;
        o.assign(&p);
        Ok(pivots)
    })
}

// ---------------------------------------------------------------------------------------------------

/// Sets the number of threads of the kernels' own pool (0 = default). Results do not depend on it.
#[pyfunction]
fn set_num_threads(n: usize) {
    parallel::set_num_threads(n);
}

/// The number of threads of the kernels' own pool.
#[pyfunction]
fn get_num_threads() -> usize {
    parallel::num_threads()
}

/// Panics inside the Rust core (on a pool thread when `in_pool`), to test that no panic reaches Python
/// as anything but `gpmkit.exceptions.GPMError`.
#[pyfunction]
#[pyo3(signature = (message, in_pool=false))]
fn _panic(py: Python<'_>, message: String, in_pool: bool) -> PyResult<()> {
    run(py, || {
        if in_pool {
            parallel::map_ordered(vec![0, 1], |i, _| {
                if i == 1 {
                    panic!("{message}")
                }
            });
        }
        panic!("{message}")
    })
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(preference_score, m)?)?;
    m.add_function(wrap_pyfunction!(preference_score_backward, m)?)?;
    m.add_function(wrap_pyfunction!(preference_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(preference_matrix_backward, m)?)?;
    m.add_function(wrap_pyfunction!(win_score, m)?)?;
    m.add_function(wrap_pyfunction!(win_score_backward, m)?)?;
    m.add_function(wrap_pyfunction!(gpm_loss, m)?)?;
    m.add_function(wrap_pyfunction!(bt_loss, m)?)?;
    m.add_function(wrap_pyfunction!(policy_loss, m)?)?;
    m.add_function(wrap_pyfunction!(maximin_strategy, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_panic, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batch_validate_store, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batch_record_costs, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batch_plan, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batch_collate, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batch_store_from_lists, m)?)?;
    m.add_function(wrap_pyfunction!(batch::batch_store_from_pairs, m)?)?;
    cuda::register(m)?;
    Ok(())
}
