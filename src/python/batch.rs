//! Bindings of [`crate::batch`]: token stores as tuples of seven contiguous int64 numpy arrays, outputs as
//! fresh numpy arrays (moved, not copied, out of the Rust vectors). Validation first, GIL released for the
//! work, errors typed (`ShapeError` / `ArgumentError`, `DTypeError` for non-int64 arrays).

use super::{map_err, py_error, run, type_name};
use crate::batch::{self, Layout, LengthOptions, Overlong, Oversize, PlanOptions, RecordCost, Side, Store};
use numpy::{
    IntoPyArray, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

const STORE_FIELDS: [&str; 7] =
    ["tokens", "seg_offsets", "rec_prompt", "rec_resp_offsets", "resp_seg", "rec_pair_offsets", "pairs"];

fn i64_array<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let py = obj.py();
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        py_error(py, "DTypeError", format!("{arg}: expected an int64 numpy array, got {}", type_name(obj)))
    })?;
    if !arr.dtype().is_equiv_to(&numpy::dtype::<i64>(py)) {
        return Err(py_error(py, "DTypeError", format!("{arg}: expected int64, got {}", arr.dtype())));
    }
    if arr.ndim() != 1 {
        return Err(py_error(py, "ShapeError", format!("{arg}: expected 1 dimension, got shape {:?}", arr.shape())));
    }
    let a: PyReadonlyArray1<i64> =
        obj.extract().map_err(|e: PyErr| py_error(py, "ShapeError", format!("{arg}: {e}")))?;
    if !a.is_contiguous() {
        return Err(py_error(py, "ShapeError", format!("{arg}: expected a contiguous array")));
    }
    Ok(a)
}

struct StoreArrays<'py>(Vec<PyReadonlyArray1<'py, i64>>);

impl<'py> StoreArrays<'py> {
    fn extract(store: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = store.py();
        let t = store.cast::<PyTuple>().map_err(|_| {
            py_error(
                py,
                "ArgumentError",
                format!("store: expected a tuple of 7 int64 arrays, got {}", type_name(store)),
            )
        })?;
        if t.len() != STORE_FIELDS.len() {
            return Err(py_error(
                py,
                "ShapeError",
                format!("store: expected a tuple of 7 arrays {STORE_FIELDS:?}, got {} items", t.len()),
            ));
        }
        let arrays = STORE_FIELDS
            .iter()
            .enumerate()
            .map(|(i, name)| i64_array(&t.get_item(i)?, name))
            .collect::<PyResult<_>>()?;
        Ok(StoreArrays(arrays))
    }

    fn view(&self) -> Store<'_> {
        let s = |i: usize| self.0[i].as_slice().expect("checked contiguous");
        Store {
            tokens: s(0),
            seg_offsets: s(1),
            rec_prompt: s(2),
            rec_resp_offsets: s(3),
            resp_seg: s(4),
            rec_pair_offsets: s(5),
            pairs: s(6),
        }
    }
}

fn length_options(py: Python<'_>, max_length: Option<i64>, overlong: &str) -> PyResult<LengthOptions> {
    let overlong = match overlong {
        "error" => Overlong::Error,
        "truncate" => Overlong::Truncate,
        other => {
            return Err(py_error(
                py,
                "ArgumentError",
                format!("overlong: expected 'error' or 'truncate', got {other:?}"),
            ))
        }
    };
    let max_length = match max_length {
        None => None,
        Some(m) if m >= 2 => Some(m as usize),
        Some(m) => {
            return Err(py_error(py, "ArgumentError", format!("max_length: expected an int ≥ 2 or None, got {m}")));
        }
    };
    Ok(LengthOptions { max_length, overlong })
}

/// Checks every structural invariant of a token store; raises `ShapeError`/`ArgumentError` naming the record.
#[pyfunction]
pub(super) fn batch_validate_store(py: Python<'_>, store: &Bound<PyAny>) -> PyResult<()> {
    let s = StoreArrays::extract(store)?;
    let v = s.view();
    run(py, || v.validate())
}

/// Per-record `(n_seqs, tokens, longest)` int64 arrays after truncation and in-record dedup.
#[pyfunction]
#[pyo3(signature = (store, max_length=None, overlong="error"))]
pub(super) fn batch_record_costs<'py>(
    py: Python<'py>,
    store: &Bound<'py, PyAny>,
    max_length: Option<i64>,
    overlong: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let opts = length_options(py, max_length, overlong)?;
    let s = StoreArrays::extract(store)?;
    let v = s.view();
    let costs = run(py, || {
        v.validate()?;
        batch::record_costs(&v, &opts)
    })?;
    let n: Vec<i64> = costs.iter().map(|c| c.n_seqs as i64).collect();
    let t: Vec<i64> = costs.iter().map(|c| c.tokens as i64).collect();
    let l: Vec<i64> = costs.iter().map(|c| c.longest as i64).collect();
    PyTuple::new(py, [n.into_pyarray(py).into_any(), t.into_pyarray(py).into_any(), l.into_pyarray(py).into_any()])
}

/// Token-budget batches of one rank: a dict with `batches` (list of int64 arrays of record indices), `costs`,
/// `steps`, `dropped`, `over_budget`, `repeated`, `dropped_batches`, `total_batches`.
#[pyfunction]
#[pyo3(signature = (n_seqs, tokens, longest, max_tokens, max_records=None, padded=false, shuffle=true, seed=0,
                    bucket_size=0, oversize="error", world_size=1, rank=0, drop_last=false))]
#[allow(clippy::too_many_arguments)]
pub(super) fn batch_plan<'py>(
    py: Python<'py>,
    n_seqs: &Bound<'py, PyAny>,
    tokens: &Bound<'py, PyAny>,
    longest: &Bound<'py, PyAny>,
    max_tokens: i64,
    max_records: Option<i64>,
    padded: bool,
    shuffle: bool,
    seed: u64,
    bucket_size: i64,
    oversize: &str,
    world_size: i64,
    rank: i64,
    drop_last: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let err = |arg: &str, expected: &str, got: String| {
        py_error(py, "ArgumentError", format!("{arg}: expected {expected}, got {got}"))
    };
    if max_tokens < 1 {
        return Err(err("max_tokens", "a positive token budget", max_tokens.to_string()));
    }
    if world_size < 1 {
        return Err(err("world_size", "a positive number of ranks", world_size.to_string()));
    }
    if rank < 0 || rank >= world_size {
        return Err(err("rank", &format!("a rank in [0, world_size = {world_size})"), rank.to_string()));
    }
    if bucket_size < 0 {
        return Err(err("bucket_size", "an int ≥ 0", bucket_size.to_string()));
    }
    let max_records = match max_records {
        None => None,
        Some(m) if m >= 1 => Some(m as usize),
        Some(m) => return Err(err("max_records", "a positive int or None", m.to_string())),
    };
    let oversize = match oversize {
        "error" => Oversize::Error,
        "drop" => Oversize::Drop,
        "alone" => Oversize::Alone,
        other => return Err(err("oversize", "'error', 'drop' or 'alone'", format!("{other:?}"))),
    };
    let (n, t, l) = (i64_array(n_seqs, "n_seqs")?, i64_array(tokens, "tokens")?, i64_array(longest, "longest")?);
    let (n, t, l) = (n.as_slice()?, t.as_slice()?, l.as_slice()?);
    if t.len() != n.len() || l.len() != n.len() {
        return Err(py_error(
            py,
            "ShapeError",
            format!("tokens, longest: expected the length of n_seqs ({}), got {} and {}", n.len(), t.len(), l.len()),
        ));
    }
    if let Some(i) = (0..n.len()).find(|&i| n[i] < 1 || t[i] < 1 || l[i] < 1 || l[i] > t[i] || l[i] > u32::MAX as i64) {
        return Err(err(
            "n_seqs, tokens, longest",
            "positive sizes with longest ≤ tokens",
            format!("record {i}: ({}, {}, {})", n[i], t[i], l[i]),
        ));
    }
    let costs: Vec<RecordCost> = (0..n.len())
        .map(|i| RecordCost { n_seqs: n[i].min(u32::MAX as i64) as u32, tokens: t[i] as u64, longest: l[i] as u32 })
        .collect();
    let opts = PlanOptions {
        max_tokens: max_tokens as u64,
        max_records,
        padded,
        shuffle,
        seed,
        bucket_size: bucket_size as usize,
        oversize,
        world_size: world_size as usize,
        rank: rank as usize,
        drop_last,
    };
    let p = run(py, || batch::plan(&costs, &opts))?;
    let d = PyDict::new(py);
    let batches = PyList::empty(py);
    for b in p.batches {
        let b: Vec<i64> = b.into_iter().map(|r| r as i64).collect();
        batches.append(b.into_pyarray(py))?;
    }
    d.set_item("batches", batches)?;
    let costs: Vec<i64> = p.costs.iter().map(|&c| c as i64).collect();
    d.set_item("costs", costs.into_pyarray(py))?;
    d.set_item("steps", p.steps)?;
    d.set_item("dropped", p.dropped)?;
    d.set_item("over_budget", p.over_budget)?;
    d.set_item("repeated", p.repeated)?;
    d.set_item("dropped_batches", p.dropped_batches)?;
    d.set_item("total_batches", p.total_batches)?;
    Ok(d)
}

/// Collates records of a store: dedup across the batch, then packed or padded layout (see `_core.pyi`).
#[pyfunction]
#[pyo3(signature = (store, records, packing=true, pad_id=0, padding_side="right", pad_to_multiple_of=1,
                    max_length=None, overlong="error", validate=true))]
#[allow(clippy::too_many_arguments)]
pub(super) fn batch_collate<'py>(
    py: Python<'py>,
    store: &Bound<'py, PyAny>,
    records: &Bound<'py, PyAny>,
    packing: bool,
    pad_id: i64,
    padding_side: &str,
    pad_to_multiple_of: i64,
    max_length: Option<i64>,
    overlong: &str,
    validate: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = length_options(py, max_length, overlong)?;
    let side = match padding_side {
        "left" => Side::Left,
        "right" => Side::Right,
        other => {
            return Err(py_error(
                py,
                "ArgumentError",
                format!("padding_side: expected 'left' or 'right', got {other:?}"),
            ))
        }
    };
    if pad_to_multiple_of < 1 {
        return Err(py_error(
            py,
            "ArgumentError",
            format!("pad_to_multiple_of: expected an int ≥ 1, got {pad_to_multiple_of}"),
        ));
    }
    let how = if packing {
        Layout::Packed
    } else {
        Layout::Padded { pad_id, side, multiple_of: pad_to_multiple_of as usize }
    };
    let s = StoreArrays::extract(store)?;
    let v = s.view();
    let recs = i64_array(records, "records")?;
    let recs = recs.as_slice()?;
    let c = run(py, || {
        let n = v.n_records();
        let ids = recs
            .iter()
            .map(|&r| {
                if r < 0 || r as u64 >= n as u64 {
                    Err(crate::GpmError::value("records", format!("record indices in [0, {n})"), r.to_string()))
                } else {
                    Ok(r as usize)
                }
            })
            .collect::<crate::Result<Vec<usize>>>()?;
        if validate {
            v.validate()?;
        } else {
            // the touched records only: enough for collate not to index out of bounds
            v.validate_records(ids.iter().copied())?;
        }
        batch::collate(&v, &ids, &opts, how)
    })?;
    let t = c.tokens;
    let u = t.seq_lengths.len();
    let d = PyDict::new(py);
    let width = t.width;
    if packing {
        d.set_item("input_ids", t.input_ids.into_pyarray(py))?;
        d.set_item("position_ids", t.position_ids.into_pyarray(py))?;
    } else {
        let shape = [u, width];
        let reshape = |x: Vec<i64>| -> PyResult<Bound<'py, PyAny>> {
            Ok(x.into_pyarray(py)
                .reshape(shape)
                .map_err(|e| map_err(py, crate::GpmError::shape("layout", "[U, T]", e.to_string())))?
                .into_any())
        };
        d.set_item("input_ids", reshape(t.input_ids)?)?;
        d.set_item("position_ids", reshape(t.position_ids)?)?;
        d.set_item("attention_mask", reshape(t.attention_mask)?)?;
    }
    d.set_item("cu_seq_lens", t.cu_seq_lens.into_pyarray(py))?;
    d.set_item("max_length", t.max_length)?;
    d.set_item("last_index", t.last_index.into_pyarray(py))?;
    d.set_item("prompt_last_index", t.prompt_last_index.into_pyarray(py))?;
    d.set_item("prompt_lengths", t.prompt_lengths.into_pyarray(py))?;
    d.set_item("seq_lengths", t.seq_lengths.into_pyarray(py))?;
    let n_pairs = c.pair_index.len();
    let pr = c
        .pair_rows
        .into_pyarray(py)
        .reshape([n_pairs, 2])
        .map_err(|e| map_err(py, crate::GpmError::shape("pair_rows", "[P, 2]", e.to_string())))?;
    d.set_item("pair_rows", pr)?;
    d.set_item("pair_index", c.pair_index.into_pyarray(py))?;
    d.set_item("pair_record", c.pair_record.into_pyarray(py))?;
    d.set_item("row_record", c.row_record.into_pyarray(py))?;
    d.set_item("row_response", c.row_response.into_pyarray(py))?;
    d.set_item("n_sequences", c.n_sequences)?;
    d.set_item("n_truncated", c.n_truncated)?;
    Ok(d)
}

fn token_list(obj: &Bound<'_, PyAny>, what: impl Fn() -> String, out: &mut Vec<i64>) -> PyResult<usize> {
    let py = obj.py();
    let bad =
        |got: String| py_error(py, "ArgumentError", format!("{}: expected a list of int token ids, got {got}", what()));
    let start = out.len();
    if let Ok(list) = obj.cast::<PyList>() {
        // The hot path of list collation: borrowed items and PyLong_AsLongLong, no per-item refcounting.
        let n = list.len();
        out.reserve(n);
        let ptr = list.as_ptr();
        for i in 0..n {
            // SAFETY: we hold the GIL and `list` keeps the list alive; PyList_GetItem returns a borrowed
            // reference (or NULL with IndexError if the list shrank), which is only read here.
            let item = unsafe { pyo3::ffi::PyList_GetItem(ptr, i as pyo3::ffi::Py_ssize_t) };
            if item.is_null() {
                let _ = PyErr::take(py);
                return Err(bad("a list that changed size while being read".into()));
            }
            // SAFETY: `item` is a valid borrowed object pointer (checked non-null above).
            let x = unsafe { pyo3::ffi::PyLong_AsLongLong(item) };
            if x == -1 && PyErr::take(py).is_some() {
                let item = list.get_item(i).map(|it| type_name(&it)).unwrap_or_else(|_| "?".into());
                return Err(bad(format!("an item of type {item}")));
            }
            out.push(x);
        }
    } else if obj.cast::<PyUntypedArray>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let v: Vec<i64> = obj.extract().map_err(|_| bad(type_name(obj)))?;
        out.extend(v);
    } else {
        return Err(bad(type_name(obj)));
    }
    Ok(out.len() - start)
}

fn seq_of<'py>(obj: &Bound<'py, PyAny>, what: impl Fn() -> String) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let py = obj.py();
    if let Ok(list) = obj.cast::<PyList>() {
        return Ok(list.iter().collect());
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(t.iter().collect());
    }
    Err(py_error(py, "ArgumentError", format!("{}: expected a list, got {}", what(), type_name(obj))))
}

/// Builds a token store from Python lists: `prompts[r]` (token ids), `responses[r]` (K_r lists of token ids)
/// and `pairs[r]` (a list of `(i, j)`); returns the store tuple (validated).
#[pyfunction]
pub(super) fn batch_store_from_lists<'py>(
    py: Python<'py>,
    prompts: &Bound<'py, PyAny>,
    responses: &Bound<'py, PyAny>,
    pairs: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let prompts = seq_of(prompts, || "prompts".into())?;
    let responses = seq_of(responses, || "responses".into())?;
    let pairs = seq_of(pairs, || "pairs".into())?;
    let n = prompts.len();
    if responses.len() != n || pairs.len() != n {
        return Err(py_error(
            py,
            "ShapeError",
            format!(
                "responses, pairs: expected one entry per prompt ({n}), got {} and {}",
                responses.len(),
                pairs.len()
            ),
        ));
    }
    let mut tokens = Vec::new();
    let mut seg_offsets = vec![0i64];
    let mut rec_prompt = Vec::with_capacity(n);
    let mut rec_resp_offsets = vec![0i64];
    let mut resp_seg = Vec::new();
    let mut rec_pair_offsets = vec![0i64];
    let mut flat_pairs = Vec::new();
    for r in 0..n {
        rec_prompt.push(seg_offsets.len() as i64 - 1);
        token_list(&prompts[r], || format!("prompts[{r}]"), &mut tokens)?;
        seg_offsets.push(tokens.len() as i64);
        for (k, resp) in seq_of(&responses[r], || format!("responses[{r}]"))?.iter().enumerate() {
            resp_seg.push(seg_offsets.len() as i64 - 1);
            token_list(resp, || format!("responses[{r}][{k}]"), &mut tokens)?;
            seg_offsets.push(tokens.len() as i64);
        }
        rec_resp_offsets.push(resp_seg.len() as i64);
        for (q, p) in seq_of(&pairs[r], || format!("pairs[{r}]"))?.iter().enumerate() {
            let (i, j): (i64, i64) = p.extract().map_err(|_| {
                py_error(
                    py,
                    "ArgumentError",
                    format!("pairs[{r}][{q}]: expected a pair (i, j) of ints, got {}", type_name(p)),
                )
            })?;
            flat_pairs.extend([i, j]);
        }
        rec_pair_offsets.push(flat_pairs.len() as i64 / 2);
    }
    validated_store(py, [tokens, seg_offsets, rec_prompt, rec_resp_offsets, resp_seg, rec_pair_offsets, flat_pairs])
}

/// Checks a store's seven arrays (`Store::validate`, errors naming the array) and returns them as numpy arrays
/// in `Store` field order.
fn validated_store(py: Python<'_>, a: [Vec<i64>; 7]) -> PyResult<Bound<'_, PyTuple>> {
    {
        let v = Store {
            tokens: &a[0],
            seg_offsets: &a[1],
            rec_prompt: &a[2],
            rec_resp_offsets: &a[3],
            resp_seg: &a[4],
            rec_pair_offsets: &a[5],
            pairs: &a[6],
        };
        run(py, || v.validate())?;
    }
    PyTuple::new(py, a.map(|x| x.into_pyarray(py).into_any()))
}

/// Builds a K = 2 store from TRL rows: `chosen_ids[b]`, `rejected_ids[b]` (full sequences) and
/// `prompt_lengths[b]` (their shared prompt: the first `prompt_lengths[b]` tokens, equal in both; -1 = the longest
/// common prefix, at least 1). Pair `(0, 1)`.
#[pyfunction]
pub(super) fn batch_store_from_pairs<'py>(
    py: Python<'py>,
    chosen_ids: &Bound<'py, PyAny>,
    rejected_ids: &Bound<'py, PyAny>,
    prompt_lengths: Vec<i64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let chosen = seq_of(chosen_ids, || "chosen_ids".into())?;
    let rejected = seq_of(rejected_ids, || "rejected_ids".into())?;
    let n = chosen.len();
    if rejected.len() != n || prompt_lengths.len() != n {
        return Err(py_error(
            py,
            "ShapeError",
            format!(
                "rejected_ids, prompt_lengths: expected one entry per chosen_ids row ({n}), got {} and {}",
                rejected.len(),
                prompt_lengths.len()
            ),
        ));
    }
    let mut tokens = Vec::new();
    let mut seg_offsets = vec![0i64];
    let mut buf = Vec::new();
    for b in 0..n {
        let start = tokens.len();
        let lc = token_list(&chosen[b], || format!("chosen_ids[{b}]"), &mut tokens)?;
        buf.clear();
        let lr = token_list(&rejected[b], || format!("rejected_ids[{b}]"), &mut buf)?;
        let mut pl = prompt_lengths[b];
        if pl == -1 {
            // the longest common prefix of the two sequences (at least 1 token)
            let common = tokens[start..start + lc].iter().zip(&buf).take_while(|(a, b)| a == b).count();
            pl = common.clamp(1, lc.min(lr).max(1)) as i64;
        }
        if pl < 1 || pl as u64 > lc.min(lr) as u64 {
            return Err(py_error(
                py,
                "ArgumentError",
                format!(
                    "prompt_lengths[{b}]: expected 1 ≤ prompt_length ≤ min(len(chosen), len(rejected)) = {}, got {pl}",
                    lc.min(lr)
                ),
            ));
        }
        // a completion must keep at least one token: a boundary at the end of a sequence moves one token left
        let pl = (pl as usize).min(lc - 1).min(lr - 1);
        if pl < 1 {
            return Err(py_error(
                py,
                "ArgumentError",
                format!("chosen_ids[{b}], rejected_ids[{b}]: expected at least 2 tokens each (a prompt and a completion), got {lc} and {lr}"),
            ));
        }
        if tokens[start..start + pl] != buf[..pl] {
            return Err(py_error(
                py,
                "ArgumentError",
                format!("chosen_ids[{b}], rejected_ids[{b}]: expected the same first prompt_length = {pl} tokens (the prompt)"),
            ));
        }
        // segments: prompt | chosen response | rejected response
        seg_offsets.push((start + pl) as i64);
        seg_offsets.push(tokens.len() as i64);
        tokens.extend_from_slice(&buf[pl..]);
        seg_offsets.push(tokens.len() as i64);
    }
    let rec_prompt: Vec<i64> = (0..n as i64).map(|b| 3 * b).collect();
    let rec_resp_offsets: Vec<i64> = (0..=n as i64).map(|b| 2 * b).collect();
    let resp_seg: Vec<i64> = (0..n as i64).flat_map(|b| [3 * b + 1, 3 * b + 2]).collect();
    let rec_pair_offsets: Vec<i64> = (0..=n as i64).collect();
    let pairs: Vec<i64> = (0..n).flat_map(|_| [0i64, 1]).collect();
    // a chosen or rejected that is all prompt has an empty response: named by validate
    validated_store(py, [tokens, seg_offsets, rec_prompt, rec_resp_offsets, resp_seg, rec_pair_offsets, pairs])
}
