//! Preference-embedding batching: dedup, padding-free packing, padding with length bucketing, token-budget
//! batches and deterministic sharding. Pure Rust over slices; no floats, no Python.
//!
//! # Data model: a token [`Store`]
//!
//! All token ids live in one flat array `tokens`, cut into *segments* by `seg_offsets` (`S + 1` entries).
//! A *record* is one prompt with K ≥ 2 responses and the comparisons among them:
//!
//! - `rec_prompt[r]`: the segment of record r's prompt (non-empty: the gate reads its last token);
//! - `resp_seg[rec_resp_offsets[r] .. rec_resp_offsets[r + 1]]`: the segments of its K responses (non-empty);
//! - `pairs[2p], pairs[2p + 1]` for `p` in `rec_pair_offsets[r] .. rec_pair_offsets[r + 1]`: comparisons
//!   `(i, j)` between responses of the record (local indices `0 ≤ i, j < K`; `i ≠ j`; each unordered pair at
//!   most once). What `(i, j)` means (i preferred, a soft label, a margin) is the caller's business: every
//!   output names the global pair index `p`, so labels and margins stay on the caller's side.
//!
//! TRL's chosen/rejected format is the case K = 2 with the one pair `(0, 1)`.
//!
//! A *sequence* is `prompt ++ response` (optionally truncated to `max_length` by cutting the response's tail),
//! with prompt length `|prompt|`. Two sequences are the same when their prompt lengths and all their tokens
//! are equal; [`collate`] embeds each distinct sequence of a batch once (hash, then exact comparison).
//!
//! # Outputs
//!
//! [`collate`] returns a [`Collated`] batch of the unique sequences, either
//!
//! - **packed** (padding-free): `input_ids [total]`, `position_ids [total]` restarting at 0 per sequence and
//!   `cu_seq_lens [U + 1]` (int32), the form transformers' flash-attention varlen path and its position-id
//!   packing under SDPA/eager expect; `last_index [U]` / `prompt_last_index [U]` are flat token indices; or
//! - **padded** `[U, T]` (left or right), `attention_mask [U, T]`; `last_index` / `prompt_last_index` are
//!   column indices,
//!
//! plus, for every comparison, the rows of its two sequences (`pair_rows [P, 2]`) and its global index.
//!
//! [`plan`] cuts records into batches under a token budget (optionally bucketed by length and shuffled with
//! a seed) and shards them over `world_size` ranks with the same number of steps on every rank and similar
//! token counts within each step.

use crate::error::{GpmError, Result};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Read-only view of a token store (see the module documentation). Offsets are `i64` as numpy gives them.
#[derive(Clone, Copy, Debug)]
pub struct Store<'a> {
    pub tokens: &'a [i64],
    pub seg_offsets: &'a [i64],
    pub rec_prompt: &'a [i64],
    pub rec_resp_offsets: &'a [i64],
    pub resp_seg: &'a [i64],
    pub rec_pair_offsets: &'a [i64],
    pub pairs: &'a [i64],
}

fn idx(x: i64, arg: &'static str, what: &str, bound: usize) -> Result<usize> {
    if x < 0 || x as u64 >= bound as u64 {
        return Err(GpmError::value(arg, format!("{what} in [0, {bound})"), x.to_string()));
    }
    Ok(x as usize)
}

fn check_offsets(off: &[i64], arg: &'static str, end: usize) -> Result<()> {
    if off.is_empty() {
        return Err(GpmError::shape(arg, "at least 1 offset (n + 1 entries, starting at 0)", "0 entries"));
    }
    if off[0] != 0 {
        return Err(GpmError::value(arg, "offsets starting at 0", format!("{arg}[0] = {}", off[0])));
    }
    for (i, w) in off.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(GpmError::value(
                arg,
                "non-decreasing offsets",
                format!("{arg}[{}] = {} < {arg}[{i}] = {}", i + 1, w[1], w[0]),
            ));
        }
    }
    let last = *off.last().expect("non-empty");
    if last as u64 != end as u64 {
        return Err(GpmError::value(
            arg,
            format!("last offset = {end} (the length of the indexed array)"),
            last.to_string(),
        ));
    }
    Ok(())
}

impl<'a> Store<'a> {
    /// Number of records.
    pub fn n_records(&self) -> usize {
        self.rec_prompt.len()
    }

    /// Number of comparisons (pairs) of all records.
    pub fn n_pairs(&self) -> usize {
        self.pairs.len() / 2
    }

    fn seg(&self, s: usize) -> &'a [i64] {
        &self.tokens[self.seg_offsets[s] as usize..self.seg_offsets[s + 1] as usize]
    }

    /// Checks every structural invariant (O(S + R + P), tokens are not read). After `Ok`, no accessor panics.
    pub fn validate(&self) -> Result<()> {
        check_offsets(self.seg_offsets, "seg_offsets", self.tokens.len())?;
        self.validate_records(0..self.n_records())
    }

    /// Checks the array sizes and the given records only (their segments, responses and pairs): enough for
    /// [`collate`] of those records not to panic, at a cost proportional to the records.
    pub fn validate_records(&self, records: impl IntoIterator<Item = usize>) -> Result<()> {
        let n_rec = self.rec_prompt.len();
        if self.seg_offsets.is_empty() {
            return Err(GpmError::shape(
                "seg_offsets",
                "at least 1 offset (S + 1 entries, starting at 0)",
                "0 entries",
            ));
        }
        if self.rec_resp_offsets.len() != n_rec + 1 {
            return Err(GpmError::shape(
                "rec_resp_offsets",
                format!("[{}]", n_rec + 1),
                format!("[{}]", self.rec_resp_offsets.len()),
            ));
        }
        if self.rec_pair_offsets.len() != n_rec + 1 {
            return Err(GpmError::shape(
                "rec_pair_offsets",
                format!("[{}]", n_rec + 1),
                format!("[{}]", self.rec_pair_offsets.len()),
            ));
        }
        if self.pairs.len() % 2 != 0 {
            return Err(GpmError::shape(
                "pairs",
                "[P, 2] (an even number of entries)",
                format!("{} entries", self.pairs.len()),
            ));
        }
        let n_seg = self.seg_offsets.len() - 1;
        let seg_len = |s: usize, what: &dyn Fn() -> String| -> Result<i64> {
            let (a, b) = (self.seg_offsets[s], self.seg_offsets[s + 1]);
            if a < 0 || b < a || b as u64 > self.tokens.len() as u64 {
                return Err(GpmError::value(
                    "seg_offsets",
                    format!("{}: 0 ≤ start ≤ end ≤ {} tokens", what(), self.tokens.len()),
                    format!("segment {s} = [{a}, {b})"),
                ));
            }
            Ok(b - a)
        };
        let range = |off: &[i64], r: usize, arg: &'static str, end: usize| -> Result<(usize, usize)> {
            let (a, b) = (off[r], off[r + 1]);
            if a < 0 || b < a || b as u64 > end as u64 {
                return Err(GpmError::value(
                    arg,
                    format!("record {r}: 0 ≤ start ≤ end ≤ {end}"),
                    format!("[{a}, {b})"),
                ));
            }
            Ok((a as usize, b as usize))
        };
        let mut seen: HashMap<(i64, i64), (), IdBuild> = HashMap::default();
        for r in records {
            if r >= n_rec {
                return Err(GpmError::value("records", format!("record indices in [0, {n_rec})"), r.to_string()));
            }
            let p = idx(self.rec_prompt[r], "rec_prompt", &format!("record {r}: a segment index"), n_seg)?;
            if seg_len(p, &|| format!("record {r} prompt"))? == 0 {
                return Err(GpmError::value("prompts", format!("record {r}: a non-empty prompt"), "0 tokens"));
            }
            let (a, b) = range(self.rec_resp_offsets, r, "rec_resp_offsets", self.resp_seg.len())?;
            let k = b - a;
            if k < 2 {
                return Err(GpmError::value("responses", format!("record {r}: at least 2 responses"), format!("{k}")));
            }
            for (i, &s) in self.resp_seg[a..b].iter().enumerate() {
                let s = idx(s, "resp_seg", &format!("record {r} response {i}: a segment index"), n_seg)?;
                if seg_len(s, &|| format!("record {r} response {i}"))? == 0 {
                    return Err(GpmError::value(
                        "responses",
                        format!("record {r} response {i}: a non-empty response"),
                        "0 tokens",
                    ));
                }
            }
            seen.clear();
            let (a, b) = range(self.rec_pair_offsets, r, "rec_pair_offsets", self.pairs.len() / 2)?;
            for q in a..b {
                let (i, j) = (self.pairs[2 * q], self.pairs[2 * q + 1]);
                for x in [i, j] {
                    idx(x, "pairs", &format!("record {r} pair {q}: a response index"), k)?;
                }
                if i == j {
                    return Err(GpmError::value(
                        "pairs",
                        format!("record {r} pair {q}: two different responses"),
                        format!("self-pair ({i}, {j})"),
                    ));
                }
                if seen.insert((i.min(j), i.max(j)), ()).is_some() {
                    return Err(GpmError::value(
                        "pairs",
                        format!("record {r}: each pair of responses compared at most once"),
                        format!("pair {q} ({i}, {j}) repeats an earlier comparison"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How to treat a sequence longer than `max_length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlong {
    /// Raise an error naming the record and the length.
    Error,
    /// Cut the response's tail so the sequence has `max_length` tokens (counted in `n_truncated`).
    Truncate,
}

/// Sequence-length options shared by [`record_costs`] and [`collate`].
#[derive(Clone, Copy, Debug)]
pub struct LengthOptions {
    /// Longest allowed sequence (prompt + response); `None` = no limit.
    pub max_length: Option<usize>,
    pub overlong: Overlong,
}

impl Default for LengthOptions {
    fn default() -> Self {
        LengthOptions { max_length: None, overlong: Overlong::Error }
    }
}

/// `(prompt, response)` lengths after truncation, and whether it was truncated.
fn fit(p: usize, q: usize, r: usize, k: usize, opts: &LengthOptions) -> Result<(usize, usize, bool)> {
    match opts.max_length {
        Some(m) if p + q > m => match opts.overlong {
            Overlong::Error => Err(GpmError::value(
                "max_length",
                format!(
                    "record {r} response {k}: a sequence of at most max_length = {m} tokens (or overlong='truncate')"
                ),
                format!("{} tokens (prompt {p} + response {q})", p + q),
            )),
            Overlong::Truncate if p >= m => Err(GpmError::value(
                "max_length",
                format!("record {r}: a prompt shorter than max_length = {m} (truncation keeps the whole prompt)"),
                format!("a prompt of {p} tokens"),
            )),
            Overlong::Truncate => Ok((p, m - p, true)),
        },
        _ => Ok((p, q, false)),
    }
}

/// Size of one record for batch planning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCost {
    /// Number of sequences (K; identical responses inside a record count once).
    pub n_seqs: u32,
    /// Tokens of its sequences after truncation (identical responses counted once).
    pub tokens: u64,
    /// Longest sequence (for the padded cost `n_seqs · longest`).
    pub longest: u32,
}

/// Per-record sizes (after truncation and in-record dedup). The store must be validated.
pub fn record_costs(store: &Store, opts: &LengthOptions) -> Result<Vec<RecordCost>> {
    let mut out = Vec::with_capacity(store.n_records());
    let mut seen: Vec<&[i64]> = Vec::new();
    for r in 0..store.n_records() {
        let p = store.seg(store.rec_prompt[r] as usize).len();
        let (a, b) = (store.rec_resp_offsets[r] as usize, store.rec_resp_offsets[r + 1] as usize);
        let mut c = RecordCost::default();
        seen.clear();
        for (k, &s) in store.resp_seg[a..b].iter().enumerate() {
            let resp = store.seg(s as usize);
            let (p, q, _) = fit(p, resp.len(), r, k, opts)?;
            let resp = &resp[..q];
            if seen.contains(&resp) {
                continue;
            }
            seen.push(resp);
            c.n_seqs += 1;
            c.tokens += (p + q) as u64;
            c.longest = c.longest.max((p + q) as u32);
        }
        out.push(c);
    }
    Ok(out)
}

// -------------------------------------------------------------------------------------------------
// hashing

/// FxHash-style word hash (rustc's): fast, and good enough because every hit is compared exactly.
#[derive(Clone, Copy)]
struct Fx(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl Fx {
    #[inline(always)]
    fn add(self, x: u64) -> Fx {
        Fx((self.0.rotate_left(5) ^ x).wrapping_mul(FX_K))
    }
    fn add_slice(mut self, s: &[i64]) -> Fx {
        for &x in s {
            self = self.add(x as u64);
        }
        self
    }
}

/// Identity hasher for keys that already are hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(FX_K);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(FX_K);
    }
}

type IdBuild = BuildHasherDefault<IdHasher>;

/// A sequence of a batch: `prompt ++ response`.
#[derive(Clone, Copy, Debug)]
pub struct Seq<'a> {
    pub prompt: &'a [i64],
    pub response: &'a [i64],
}

impl Seq<'_> {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Deduplication of sequences: `row_of[i]` is the unique row of sequence i, `first[u]` the first sequence
/// of unique row u (rows are numbered in order of first appearance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dedup {
    pub row_of: Vec<usize>,
    pub first: Vec<usize>,
}

/// Groups equal sequences (same prompt length, same tokens). `prompt_hash[i]` must be the [`Fx`] state after
/// the prompt of sequence i (pass `None` to compute it).
fn dedup_with(seqs: &[Seq], prompt_hash: Option<&[u64]>) -> Dedup {
    dedup_by(seqs, |i, s| {
        let hp = match prompt_hash {
            Some(h) => Fx(h[i]),
            None => Fx(0).add_slice(s.prompt),
        };
        hp.add(s.prompt.len() as u64 ^ 0x9e37_79b9_7f4a_7c15).add_slice(s.response).0
    })
}

/// Dedup with a given hash of each sequence (exact comparison on every hash hit).
fn dedup_by(seqs: &[Seq], hash: impl Fn(usize, &Seq) -> u64) -> Dedup {
    let mut table: HashMap<u64, usize, IdBuild> = HashMap::with_capacity_and_hasher(seqs.len(), IdBuild::default());
    let mut next: Vec<usize> = Vec::with_capacity(seqs.len()); // chain of unique rows sharing a hash
    let mut row_of = Vec::with_capacity(seqs.len());
    let mut first: Vec<usize> = Vec::with_capacity(seqs.len());
    for (i, s) in seqs.iter().enumerate() {
        let h = hash(i, s);
        let mut found = None;
        if let Some(&head) = table.get(&h) {
            let mut u = head;
            loop {
                let t = &seqs[first[u]];
                if t.prompt.len() == s.prompt.len() && t.response == s.response && t.prompt == s.prompt {
                    found = Some(u);
                    break;
                }
                if next[u] == usize::MAX {
                    break;
                }
                u = next[u];
            }
            if found.is_none() {
                // new row with a colliding hash: put it at the chain's head
                let u = first.len();
                first.push(i);
                next.push(head);
                table.insert(h, u);
                found = Some(u);
            }
        } else {
            let u = first.len();
            first.push(i);
            next.push(usize::MAX);
            table.insert(h, u);
            found = Some(u);
        }
        row_of.push(found.expect("set above"));
    }
    Dedup { row_of, first }
}

/// Groups equal sequences (same prompt length and same tokens); rows in order of first appearance.
pub fn dedup(seqs: &[Seq]) -> Dedup {
    dedup_with(seqs, None)
}

// -------------------------------------------------------------------------------------------------
// packing and padding

/// Padding side of the padded layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// Layout of a collated batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Padding-free: one row of all unique sequences back to back.
    Packed,
    /// `[U, T]` padded with `pad_id` on `side`, `T` rounded up to a multiple of `multiple_of` (≥ 1).
    Padded { pad_id: i64, side: Side, multiple_of: usize },
}

/// Token arrays of a batch of sequences (see the module documentation for the two layouts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Packed: `[total]`; padded: `[U · width]` row-major.
    pub input_ids: Vec<i64>,
    /// Packed: restarting at 0 per sequence; padded: `cumsum(mask) − 1`, 0 on pads.
    pub position_ids: Vec<i64>,
    /// Padded only: `[U · width]`, 1 on tokens; empty when packed.
    pub attention_mask: Vec<i64>,
    /// `[U + 1]` cumulative sequence lengths (int32, as flash-attention wants them).
    pub cu_seq_lens: Vec<i32>,
    /// Packed: flat index of each sequence's last token; padded: its column.
    pub last_index: Vec<i64>,
    /// Packed: flat index of each sequence's last prompt token; padded: its column.
    pub prompt_last_index: Vec<i64>,
    /// `[U]` prompt lengths.
    pub prompt_lengths: Vec<i64>,
    /// `[U]` sequence lengths.
    pub seq_lengths: Vec<i64>,
    /// Longest sequence.
    pub max_length: usize,
    /// Padded width T (packed: the total token count).
    pub width: usize,
}

/// Packs or pads `seqs` (every sequence must have a non-empty prompt).
pub fn layout(seqs: &[Seq], how: Layout) -> Result<Tokens> {
    let n = seqs.len();
    let mut t = Tokens {
        cu_seq_lens: Vec::with_capacity(n + 1),
        last_index: Vec::with_capacity(n),
        prompt_last_index: Vec::with_capacity(n),
        prompt_lengths: Vec::with_capacity(n),
        seq_lengths: Vec::with_capacity(n),
        ..Default::default()
    };
    let mut total: usize = 0;
    t.cu_seq_lens.push(0);
    for (i, s) in seqs.iter().enumerate() {
        if s.prompt.is_empty() {
            return Err(GpmError::value("prompt_lengths", format!("sequence {i}: a prompt of at least 1 token"), "0"));
        }
        total += s.len();
        if total > i32::MAX as usize {
            return Err(GpmError::value(
                "sequences",
                "at most 2^31 − 1 tokens per batch (cu_seq_lens is int32)",
                total.to_string(),
            ));
        }
        t.cu_seq_lens.push(total as i32);
        t.max_length = t.max_length.max(s.len());
        t.prompt_lengths.push(s.prompt.len() as i64);
        t.seq_lengths.push(s.len() as i64);
    }
    match how {
        Layout::Packed => {
            t.width = total;
            t.input_ids.reserve_exact(total);
            t.position_ids.reserve_exact(total);
            for (i, s) in seqs.iter().enumerate() {
                let start = t.cu_seq_lens[i] as i64;
                t.input_ids.extend_from_slice(s.prompt);
                t.input_ids.extend_from_slice(s.response);
                t.position_ids.extend(0..s.len() as i64);
                t.last_index.push(start + s.len() as i64 - 1);
                t.prompt_last_index.push(start + s.prompt.len() as i64 - 1);
            }
        }
        Layout::Padded { pad_id, side, multiple_of } => {
            if multiple_of == 0 {
                return Err(GpmError::value("pad_to_multiple_of", "a positive integer", "0"));
            }
            let w = t.max_length.div_ceil(multiple_of) * multiple_of;
            t.width = w;
            t.input_ids = vec![pad_id; n * w];
            t.attention_mask = vec![0; n * w];
            t.position_ids = vec![0; n * w];
            for (i, s) in seqs.iter().enumerate() {
                let l = s.len();
                let c0 = if side == Side::Left { w - l } else { 0 };
                let row = i * w + c0;
                t.input_ids[row..row + s.prompt.len()].copy_from_slice(s.prompt);
                t.input_ids[row + s.prompt.len()..row + l].copy_from_slice(s.response);
                t.attention_mask[row..row + l].fill(1);
                for (j, p) in t.position_ids[row..row + l].iter_mut().enumerate() {
                    *p = j as i64;
                }
                t.last_index.push((c0 + l - 1) as i64);
                t.prompt_last_index.push((c0 + s.prompt.len() - 1) as i64);
            }
        }
    }
    Ok(t)
}

// -------------------------------------------------------------------------------------------------
// collation

/// A collated batch of records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collated {
    /// The unique sequences' tokens.
    pub tokens: Tokens,
    /// `[P, 2]` row-major: unique rows of the two sequences of every comparison (in record order, then pair order).
    pub pair_rows: Vec<i64>,
    /// `[P]` global pair index (into the store's `pairs`) of every comparison.
    pub pair_index: Vec<i64>,
    /// `[P]` position in the batch (0-based) of the record of every comparison.
    pub pair_record: Vec<i64>,
    /// `[U]` record (global index) each unique row came from first.
    pub row_record: Vec<i64>,
    /// `[U]` local response index each unique row came from first.
    pub row_response: Vec<i64>,
    /// Sequences before deduplication (K summed over records).
    pub n_sequences: usize,
    /// Sequences whose response was cut to `max_length`.
    pub n_truncated: usize,
}

/// Gathers `records` (global indices) from a validated store, deduplicates their sequences across the whole
/// batch, and lays out the unique ones. `records` may repeat a record (its sequences dedup to the same rows).
pub fn collate(store: &Store, records: &[usize], len_opts: &LengthOptions, how: Layout) -> Result<Collated> {
    let n_rec = store.n_records();
    let mut seqs: Vec<Seq> = Vec::new();
    let mut phash: Vec<u64> = Vec::new();
    let mut seq_base: Vec<usize> = Vec::with_capacity(records.len());
    let mut n_truncated = 0;
    let mut origin: Vec<(usize, usize)> = Vec::new();
    for &r in records {
        if r >= n_rec {
            return Err(GpmError::value("records", format!("record indices in [0, {n_rec})"), r.to_string()));
        }
        let prompt = store.seg(store.rec_prompt[r] as usize);
        let h = Fx(0).add_slice(prompt).0;
        seq_base.push(seqs.len());
        let (a, b) = (store.rec_resp_offsets[r] as usize, store.rec_resp_offsets[r + 1] as usize);
        for (k, &s) in store.resp_seg[a..b].iter().enumerate() {
            let resp = store.seg(s as usize);
            let (_, q, cut) = fit(prompt.len(), resp.len(), r, k, len_opts)?;
            n_truncated += cut as usize;
            seqs.push(Seq { prompt, response: &resp[..q] });
            phash.push(h);
            origin.push((r, k));
        }
    }
    let d = dedup_with(&seqs, Some(&phash));
    let unique: Vec<Seq> = d.first.iter().map(|&i| seqs[i]).collect();
    let tokens = layout(&unique, how)?;
    let mut pair_rows = Vec::new();
    let mut pair_index = Vec::new();
    let mut pair_record = Vec::new();
    for (pos, &r) in records.iter().enumerate() {
        for q in store.rec_pair_offsets[r] as usize..store.rec_pair_offsets[r + 1] as usize {
            let (i, j) = (store.pairs[2 * q] as usize, store.pairs[2 * q + 1] as usize);
            pair_rows.push(d.row_of[seq_base[pos] + i] as i64);
            pair_rows.push(d.row_of[seq_base[pos] + j] as i64);
            pair_index.push(q as i64);
            pair_record.push(pos as i64);
        }
    }
    Ok(Collated {
        tokens,
        pair_rows,
        pair_index,
        pair_record,
        row_record: d.first.iter().map(|&i| origin[i].0 as i64).collect(),
        row_response: d.first.iter().map(|&i| origin[i].1 as i64).collect(),
        n_sequences: seqs.len(),
        n_truncated,
    })
}

// -------------------------------------------------------------------------------------------------
// planning: token budgets, bucketing, shuffling, sharding

/// SplitMix64: a tiny, well-mixed, seedable generator (the plan must be identical on every rank).
#[derive(Clone, Copy, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n ≥ 1), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// What to do with a record that does not fit the token budget on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oversize {
    /// Raise an error naming the record.
    Error,
    /// Leave it out (counted in [`Plan::dropped`]).
    Drop,
    /// Give it a batch of its own, over the budget (counted in [`Plan::over_budget`]).
    Alone,
}

/// Options of [`plan`].
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Token budget per batch: packed cost `Σ tokens`, padded cost `Σ n_seqs · longest` (≥ 1).
    pub max_tokens: u64,
    /// At most this many records per batch (`None` = no limit).
    pub max_records: Option<usize>,
    /// Budget with the padded cost.
    pub padded: bool,
    /// Shuffle records (and the order of steps) with `seed`.
    pub shuffle: bool,
    pub seed: u64,
    /// Sort records by length inside windows of this many records before cutting batches (0 = no bucketing).
    pub bucket_size: usize,
    pub oversize: Oversize,
    pub world_size: usize,
    pub rank: usize,
    /// `true`: drop the last `n_batches mod world_size` batches; `false`: repeat the first ones so every rank
    /// gets the same number of steps (repeats are counted in [`Plan::repeated`]).
    pub drop_last: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            max_tokens: 4096,
            max_records: None,
            padded: false,
            shuffle: true,
            seed: 0,
            bucket_size: 0,
            oversize: Oversize::Error,
            world_size: 1,
            rank: 0,
            drop_last: false,
        }
    }
}

/// The batches of one rank.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Record indices of each batch of this rank, in step order.
    pub batches: Vec<Vec<usize>>,
    /// Planned cost (tokens) of each batch of this rank.
    pub costs: Vec<u64>,
    /// Steps every rank runs (`batches.len()`).
    pub steps: usize,
    /// Records left out for not fitting the budget (`Oversize::Drop`), global indices.
    pub dropped: Vec<usize>,
    /// Records given an over-budget batch of their own (`Oversize::Alone`), global indices.
    pub over_budget: Vec<usize>,
    /// Batches (over all ranks) repeated to even out the step count (`drop_last = false`).
    pub repeated: usize,
    /// Batches (over all ranks) left out to even out the step count (`drop_last = true`).
    pub dropped_batches: usize,
    /// Batches over all ranks before evening out.
    pub total_batches: usize,
}

fn batch_cost(n_seqs: u64, tokens: u64, longest: u64, padded: bool) -> u64 {
    if padded {
        n_seqs * longest
    } else {
        tokens
    }
}

/// Cuts records into token-budget batches and returns those of `opts.rank`.
///
/// Deterministic: the same costs and options give the same plan on every rank and every run. Steps: all
/// batches of all ranks are sorted by cost and dealt `world_size` at a time, so the batches that run in the
/// same step have similar token counts; the order of steps is shuffled with the seed.
pub fn plan(costs: &[RecordCost], opts: &PlanOptions) -> Result<Plan> {
    if opts.max_tokens == 0 {
        return Err(GpmError::value("max_tokens", "a positive token budget", "0"));
    }
    if opts.world_size == 0 {
        return Err(GpmError::value("world_size", "a positive number of ranks", "0"));
    }
    if opts.rank >= opts.world_size {
        return Err(GpmError::value(
            "rank",
            format!("a rank in [0, world_size = {})", opts.world_size),
            opts.rank.to_string(),
        ));
    }
    if opts.max_records == Some(0) {
        return Err(GpmError::value("max_records", "a positive number of records per batch (or None)", "0"));
    }
    let mut rng = SplitMix64::new(opts.seed ^ 0x6770_6d6b_6974);
    let mut order: Vec<usize> = (0..costs.len()).collect();
    if opts.shuffle {
        rng.shuffle(&mut order);
    }
    if opts.bucket_size > 1 {
        for w in order.chunks_mut(opts.bucket_size) {
            w.sort_by_key(|&r| (costs[r].longest, costs[r].tokens));
        }
    }
    let mut out = Plan::default();
    let mut batches: Vec<(Vec<usize>, u64)> = Vec::new();
    let (mut cur, mut n, mut t, mut l) = (Vec::new(), 0u64, 0u64, 0u64);
    let max_records = opts.max_records.unwrap_or(usize::MAX);
    for r in order {
        let c = costs[r];
        let alone = batch_cost(c.n_seqs as u64, c.tokens, c.longest as u64, opts.padded);
        if alone > opts.max_tokens {
            match opts.oversize {
                Oversize::Error => {
                    return Err(GpmError::value(
                        "max_tokens",
                        format!("a budget that fits record {r} alone ({alone} tokens), or oversize='drop'/'alone'"),
                        opts.max_tokens.to_string(),
                    ))
                }
                Oversize::Drop => {
                    out.dropped.push(r);
                    continue;
                }
                Oversize::Alone => {
                    out.over_budget.push(r);
                    batches.push((vec![r], alone));
                    continue;
                }
            }
        }
        let (n2, t2, l2) = (n + c.n_seqs as u64, t + c.tokens, l.max(c.longest as u64));
        if !cur.is_empty() && (batch_cost(n2, t2, l2, opts.padded) > opts.max_tokens || cur.len() >= max_records) {
            batches.push((std::mem::take(&mut cur), batch_cost(n, t, l, opts.padded)));
            (n, t, l) = (c.n_seqs as u64, c.tokens, c.longest as u64);
        } else {
            (n, t, l) = (n2, t2, l2);
        }
        cur.push(r);
    }
    if !cur.is_empty() {
        batches.push((cur, batch_cost(n, t, l, opts.padded)));
    }
    out.total_batches = batches.len();
    let w = opts.world_size;
    let rem = batches.len() % w;
    if rem != 0 {
        if opts.drop_last {
            // leave out the cheapest batches (the ragged ends of buckets)
            batches.sort_by_key(|b| b.1);
            batches.drain(..rem);
            out.dropped_batches = rem;
        } else {
            let extra = w - rem;
            for i in 0..extra {
                let b = batches[i % batches.len()].clone();
                batches.push(b);
            }
            out.repeated = extra;
        }
    }
    // stable sort by cost (descending), deal w at a time: one step = w batches of similar cost
    let mut ids: Vec<usize> = (0..batches.len()).collect();
    ids.sort_by_key(|&i| std::cmp::Reverse(batches[i].1));
    let mut steps: Vec<&[usize]> = ids.chunks(w).collect();
    if opts.shuffle {
        rng.shuffle(&mut steps);
    }
    out.steps = steps.len();
    for step in steps {
        let (recs, cost) = &batches[step[opts.rank]];
        out.batches.push(recs.clone());
        out.costs.push(*cost);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(prompt, responses, pairs)`.
    type Rec = (Vec<i64>, Vec<Vec<i64>>, Vec<(i64, i64)>);

    /// A store built from `(prompt, responses, pairs)` records.
    struct Owned {
        tokens: Vec<i64>,
        seg_offsets: Vec<i64>,
        rec_prompt: Vec<i64>,
        rec_resp_offsets: Vec<i64>,
        resp_seg: Vec<i64>,
        rec_pair_offsets: Vec<i64>,
        pairs: Vec<i64>,
    }

    impl Owned {
        fn new(records: &[Rec]) -> Self {
            let mut o = Owned {
                tokens: vec![],
                seg_offsets: vec![0],
                rec_prompt: vec![],
                rec_resp_offsets: vec![0],
                resp_seg: vec![],
                rec_pair_offsets: vec![0],
                pairs: vec![],
            };
            for (p, rs, ps) in records {
                o.rec_prompt.push(o.seg_offsets.len() as i64 - 1);
                o.tokens.extend(p);
                o.seg_offsets.push(o.tokens.len() as i64);
                for r in rs {
                    o.resp_seg.push(o.seg_offsets.len() as i64 - 1);
                    o.tokens.extend(r);
                    o.seg_offsets.push(o.tokens.len() as i64);
                }
                o.rec_resp_offsets.push(o.resp_seg.len() as i64);
                for &(i, j) in ps {
                    o.pairs.extend([i, j]);
                }
                o.rec_pair_offsets.push(o.pairs.len() as i64 / 2);
            }
            o
        }
        fn store(&self) -> Store<'_> {
            Store {
                tokens: &self.tokens,
                seg_offsets: &self.seg_offsets,
                rec_prompt: &self.rec_prompt,
                rec_resp_offsets: &self.rec_resp_offsets,
                resp_seg: &self.resp_seg,
                rec_pair_offsets: &self.rec_pair_offsets,
                pairs: &self.pairs,
            }
        }
    }

    fn all_pairs(k: i64) -> Vec<(i64, i64)> {
        let mut v = vec![];
        for i in 0..k {
            for j in i + 1..k {
                v.push((i, j));
            }
        }
        v
    }

    fn sample() -> Owned {
        Owned::new(&[
            (vec![1, 2, 3], vec![vec![10], vec![11, 12], vec![13, 14, 15], vec![10]], all_pairs(4)),
            (vec![4], vec![vec![20, 21], vec![22]], vec![(1, 0)]),
            // same prompt and a response equal to record 0's first one: dedups across records
            (vec![1, 2, 3], vec![vec![10], vec![16]], vec![(0, 1)]),
        ])
    }

    #[test]
    fn dedup_groups_equal_sequences_and_respects_the_prompt_boundary() {
        let a = [1i64, 2, 3];
        let seqs = [
            Seq { prompt: &a[..2], response: &a[2..] },
            Seq { prompt: &a[..1], response: &a[1..] }, // same tokens, other prompt length: distinct
            Seq { prompt: &a[..2], response: &a[2..] },
            Seq { prompt: &a[..], response: &[] },
        ];
        let d = dedup(&seqs);
        assert_eq!(d.row_of, vec![0, 1, 0, 2]);
        assert_eq!(d.first, vec![0, 1, 3]);
    }

    #[test]
    fn dedup_survives_hash_collisions() {
        // every sequence in one hash bucket (and a second bucket): exact comparison still separates them
        let toks: Vec<Vec<i64>> = (0..50).map(|i| vec![i % 7, i % 5]).collect();
        let p = [9i64];
        let seqs: Vec<Seq> = toks.iter().map(|t| Seq { prompt: &p, response: t }).collect();
        let d = dedup_by(&seqs, |_, s| (s.response[0] % 2) as u64);
        assert_eq!(d.first.len(), 35);
        assert_eq!(d, dedup(&seqs), "same grouping as with the real hash");
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(seqs[d.first[d.row_of[i]]].response, s.response);
        }
    }

    #[test]
    fn packs_with_restarting_positions_and_indices() {
        let o = sample();
        let st = o.store();
        st.validate().unwrap();
        let c = collate(&st, &[0, 1, 2], &LengthOptions::default(), Layout::Packed).unwrap();
        assert_eq!(c.n_sequences, 8);
        // unique: r0: 4,2,3 -> [1,2,3,10] [1,2,3,11,12] [1,2,3,13,14,15]; (dup 10); r1: [4,20,21] [4,22]; r2: [1,2,3,16]
        let t = &c.tokens;
        assert_eq!(t.seq_lengths, vec![4, 5, 6, 3, 2, 4]);
        assert_eq!(t.cu_seq_lens, vec![0, 4, 9, 15, 18, 20, 24]);
        assert_eq!(&t.input_ids[..9], &[1, 2, 3, 10, 1, 2, 3, 11, 12]);
        assert_eq!(&t.position_ids[..9], &[0, 1, 2, 3, 0, 1, 2, 3, 4]);
        assert_eq!(t.last_index, vec![3, 8, 14, 17, 19, 23]);
        assert_eq!(t.prompt_last_index, vec![2, 6, 11, 15, 18, 22]);
        assert_eq!(t.prompt_lengths, vec![3, 3, 3, 1, 1, 3]);
        // pairs: 6 of record 0 over rows [0,1,2,0], then (1,0) of record 1, then (0,1) of record 2
        let pr: Vec<(i64, i64)> = c.pair_rows.chunks(2).map(|p| (p[0], p[1])).collect();
        assert_eq!(pr, vec![(0, 1), (0, 2), (0, 0), (1, 2), (1, 0), (2, 0), (4, 3), (0, 5)]);
        assert_eq!(c.pair_index, (0..8).collect::<Vec<_>>());
        assert_eq!(c.pair_record, vec![0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(c.row_record, vec![0, 0, 0, 1, 1, 2]);
        assert_eq!(c.row_response, vec![0, 1, 2, 0, 1, 1]);
    }

    #[test]
    fn validate_rejects_duplicate_pairs() {
        let o = Owned::new(&[(vec![1], vec![vec![2], vec![3]], vec![(0, 1), (1, 0)])]);
        let e = o.store().validate().unwrap_err().to_string();
        assert!(e.contains("repeats an earlier comparison"), "{e}");
    }

    #[test]
    fn pads_left_and_right() {
        let o = sample();
        let st = o.store();
        for side in [Side::Left, Side::Right] {
            let c = collate(&st, &[1], &LengthOptions::default(), Layout::Padded { pad_id: -1, side, multiple_of: 4 })
                .unwrap();
            let t = &c.tokens;
            assert_eq!(t.width, 4);
            if side == Side::Right {
                assert_eq!(t.input_ids, vec![4, 20, 21, -1, 4, 22, -1, -1]);
                assert_eq!(t.attention_mask, vec![1, 1, 1, 0, 1, 1, 0, 0]);
                assert_eq!(t.last_index, vec![2, 1]);
                assert_eq!(t.prompt_last_index, vec![0, 0]);
            } else {
                assert_eq!(t.input_ids, vec![-1, 4, 20, 21, -1, -1, 4, 22]);
                assert_eq!(t.position_ids, vec![0, 0, 1, 2, 0, 0, 0, 1]);
                assert_eq!(t.last_index, vec![3, 3]);
                assert_eq!(t.prompt_last_index, vec![1, 2]);
            }
        }
    }

    #[test]
    fn truncation_is_counted_or_refused() {
        let o = sample();
        let st = o.store();
        let trunc = LengthOptions { max_length: Some(4), overlong: Overlong::Truncate };
        let c = collate(&st, &[0], &trunc, Layout::Packed).unwrap();
        assert_eq!(c.n_truncated, 2);
        // [1,2,3,11] and [1,2,3,13] are distinct, [1,2,3,10] twice
        assert_eq!(c.tokens.seq_lengths, vec![4, 4, 4]);
        let err = LengthOptions { max_length: Some(4), overlong: Overlong::Error };
        let e = collate(&st, &[0], &err, Layout::Packed).unwrap_err().to_string();
        assert!(e.contains("record 0 response 1") && e.contains("5 tokens"), "{e}");
        let short = LengthOptions { max_length: Some(3), overlong: Overlong::Truncate };
        assert!(collate(&st, &[0], &short, Layout::Packed).unwrap_err().to_string().contains("prompt"));
        let costs = record_costs(&st, &trunc).unwrap();
        assert_eq!(costs[0], RecordCost { n_seqs: 3, tokens: 12, longest: 4 });
    }

    #[test]
    fn validate_rejects_bad_records() {
        let cases: Vec<(Owned, &str)> = vec![
            (Owned::new(&[(vec![], vec![vec![2], vec![3]], vec![(0, 1)])]), "non-empty prompt"),
            (Owned::new(&[(vec![1], vec![vec![2], vec![]], vec![(0, 1)])]), "non-empty response"),
            (Owned::new(&[(vec![1], vec![vec![2]], vec![])]), "at least 2 responses"),
            (Owned::new(&[(vec![1], vec![vec![2], vec![3]], vec![(0, 2)])]), "response index in [0, 2)"),
            (Owned::new(&[(vec![1], vec![vec![2], vec![3]], vec![(1, 1)])]), "self-pair"),
            (Owned::new(&[(vec![1], vec![vec![2], vec![3]], vec![(-1, 1)])]), "response index"),
        ];
        for (o, msg) in cases {
            let e = o.store().validate().unwrap_err().to_string();
            assert!(e.contains(msg), "{e} should mention {msg}");
        }
        let mut o = sample();
        o.seg_offsets[2] = 1;
        assert!(o.store().validate().unwrap_err().to_string().contains("non-decreasing"));
        let mut o = sample();
        o.rec_resp_offsets.pop();
        assert!(o.store().validate().unwrap_err().to_string().contains("rec_resp_offsets"));
    }

    fn costs(ts: &[u64]) -> Vec<RecordCost> {
        ts.iter().map(|&t| RecordCost { n_seqs: 2, tokens: t, longest: (t / 2) as u32 }).collect()
    }

    #[test]
    fn plan_respects_budget_and_covers_every_record_once() {
        let c = costs(&(1..=100).map(|i| (i * 7 % 50 + 2) as u64).collect::<Vec<_>>());
        let opts = PlanOptions { max_tokens: 120, seed: 3, ..Default::default() };
        let p = plan(&c, &opts).unwrap();
        let mut seen: Vec<usize> = p.batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for (b, &cost) in p.batches.iter().zip(&p.costs) {
            assert_eq!(b.iter().map(|&r| c[r].tokens).sum::<u64>(), cost);
            assert!(cost <= 120);
        }
        assert_eq!(plan(&c, &opts).unwrap(), p, "deterministic");
        let other = plan(&c, &PlanOptions { seed: 4, ..opts }).unwrap();
        assert_ne!(other.batches, p.batches, "the seed matters");
    }

    #[test]
    fn plan_shards_with_equal_steps_and_balanced_cost() {
        let c = costs(&(0..101).map(|i| (i * 13 % 90 + 5) as u64).collect::<Vec<_>>());
        for drop_last in [false, true] {
            let w = 3;
            let plans: Vec<Plan> = (0..w)
                .map(|rank| {
                    plan(
                        &c,
                        &PlanOptions {
                            max_tokens: 200,
                            world_size: w,
                            rank,
                            drop_last,
                            bucket_size: 16,
                            ..Default::default()
                        },
                    )
                    .unwrap()
                })
                .collect();
            let steps = plans[0].steps;
            assert!(plans.iter().all(|p| p.steps == steps && p.batches.len() == steps));
            let mut all: Vec<usize> = plans.iter().flat_map(|p| p.batches.iter().flatten().copied()).collect();
            all.sort();
            all.dedup();
            if !drop_last {
                assert_eq!(all.len(), 101, "every record is seen");
                assert_eq!((plans[0].total_batches + plans[0].repeated) % w, 0);
            } else {
                assert_eq!(plans[0].total_batches - plans[0].dropped_batches, steps * w);
            }
            // per step, costs are similar: the spread is at most the spread of neighbouring sorted batches
            let total: Vec<u64> = plans.iter().map(|p| p.costs.iter().sum()).collect();
            let (lo, hi) = (*total.iter().min().unwrap(), *total.iter().max().unwrap());
            assert!((hi - lo) as f64 <= 0.1 * hi as f64, "rank loads {total:?}");
        }
    }

    #[test]
    fn plan_errors_and_oversize_policies() {
        let c = costs(&[10, 500, 20]);
        let base = PlanOptions { max_tokens: 100, shuffle: false, ..Default::default() };
        assert!(plan(&c, &base).unwrap_err().to_string().contains("record 1"));
        let p = plan(&c, &PlanOptions { oversize: Oversize::Drop, ..base }).unwrap();
        assert_eq!(p.dropped, vec![1]);
        assert_eq!(p.batches, vec![vec![0, 2]]);
        let p = plan(&c, &PlanOptions { oversize: Oversize::Alone, ..base }).unwrap();
        assert_eq!(p.over_budget, vec![1]);
        assert_eq!(p.batches.len(), 2);
        assert!(plan(&c, &PlanOptions { rank: 2, world_size: 2, ..base }).unwrap_err().to_string().contains("rank"));
        assert!(plan(&c, &PlanOptions { world_size: 0, ..base }).is_err());
        assert!(plan(&c, &PlanOptions { max_tokens: 0, ..base }).is_err());
        let p = plan(&costs(&[10, 10, 10]), &PlanOptions { max_records: Some(2), ..base }).unwrap();
        assert_eq!(p.batches.len(), 2);
        // padded cost: n_seqs · longest
        let pc =
            vec![RecordCost { n_seqs: 4, tokens: 40, longest: 30 }, RecordCost { n_seqs: 4, tokens: 40, longest: 10 }];
        let p = plan(&pc, &PlanOptions { max_tokens: 130, padded: true, ..base }).unwrap();
        assert_eq!(p.batches.len(), 2, "4·30 + 4 more seqs at 30 wide > 130");
        assert_eq!(plan(&pc, &PlanOptions { max_tokens: 130, ..base }).unwrap().batches.len(), 1);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..1000).collect();
        SplitMix64::new(1).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
