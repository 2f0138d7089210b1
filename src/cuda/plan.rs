//! Launch plans for the CUDA kernels (`src/cuda/kernels/*.cu`): which kernels run, in which order, with
//! which grid and arguments. Pure Rust (no CUDA needed), so every rule here is unit-tested on CPU.
//!
//! Every kernel runs `BLOCK` threads per block over a grid-stride loop. The grid depends only on the
//! problem shape (never on the device), so the per-block partial sums of a loss, and hence the loss bits,
//! are the same on every GPU and every run. Pointers are raw device addresses of caller-allocated
//! (torch) memory; 0 stands for an absent optional tensor.

use crate::error::{GpmError, Result};

/// Threads per block of every kernel (`GPM_BLOCK` in `common.cuh`).
pub const BLOCK: u32 = 256;
/// Upper bound on the grid: enough resident warps to saturate HBM on an H100 (132 SMs × 8 blocks) with
/// a few waves to spare; beyond it the kernels loop.
pub const MAX_GRID: u32 = 4096;

/// Rows one thread group handles per round in the pair-row kernels (`GPM_UNROLL` in `common.cuh`).
pub const UNROLL: i64 = 4;

/// Grid of a pair-row kernel (`score_fwd`, `gpm_fwd`, `gpm_bwd`) over `n` rows of `lanes` threads each,
/// [`UNROLL`] rows per group and round. For `gpm_fwd` it is also the number of partial sums.
pub fn row_grid(n: i64, lanes: i32) -> u32 {
    grid_for((n + UNROLL - 1) / UNROLL * i64::from(lanes))
}

/// Element type of the tensors of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
}

impl DType {
    /// Parses the names the Python layer sends (`"f32"`, `"f64"`, `"bf16"`, `"f16"`).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "f64" => Ok(Self::F64),
            "bf16" => Ok(Self::BF16),
            "f16" => Ok(Self::F16),
            _ => Err(GpmError::value("dtype", "one of 'f32', 'f64', 'bf16', 'f16'", format!("{name:?}"))),
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::BF16 => "bf16",
            Self::F16 => "f16",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F64 => 8,
            Self::BF16 | Self::F16 => 2,
        }
    }
    /// Bytes per element of the accumulation type (`Acc<T>` in `common.cuh`).
    fn acc_size(self) -> u64 {
        if self == Self::F64 {
            8
        } else {
            4
        }
    }
}

/// One kernel argument, in the kernel's parameter order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F64(f64),
}

/// One kernel launch: `kernel<<<grid, BLOCK, 0, stream>>>(args...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: String,
    pub module: Module,
    pub grid: u32,
    pub args: Vec<Arg>,
}

/// The PTX module a kernel lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Score,
    Loss,
}

/// Lanes per row for a row of `k` 2-D blocks: the next power of two ≥ k, at most a warp.
pub fn group_size(k: i64) -> i32 {
    let mut g = 1i64;
    while g < k.min(32) {
        g *= 2;
    }
    g as i32
}

/// Blocks for `threads` threads (at least one, at most [`MAX_GRID`]); 0 when there is no work.
pub fn grid_for(threads: i64) -> u32 {
    if threads <= 0 {
        return 0;
    }
    let blocks = (threads as u64).div_ceil(u64::from(BLOCK));
    blocks.min(u64::from(MAX_GRID)) as u32
}

/// Loss reduction (`'none'`, `'mean'`, `'sum'`), coded 0/1/2 by the Python layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    None,
    Mean,
    Sum,
}

impl Reduce {
    fn from_code(code: f64) -> Result<Self> {
        match code as i64 {
            0 if code == 0.0 => Ok(Self::None),
            1 if code == 1.0 => Ok(Self::Mean),
            2 if code == 2.0 => Ok(Self::Sum),
            _ => Err(GpmError::value("reduction", "0 ('none'), 1 ('mean') or 2 ('sum')", format!("{code}"))),
        }
    }
}

/// A request from the Python layer: the operation, its tensors, sizes and scalar parameters.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub op: &'a str,
    pub dtype: DType,
    pub ptrs: &'a [u64],
    pub sizes: &'a [i64],
    pub scalars: &'a [f64],
}

struct Builder<'r> {
    req: &'r Request<'r>,
    launches: Vec<Launch>,
}

impl<'r> Builder<'r> {
    fn push(&mut self, name: &str, module: Module, grid: u32, args: Vec<Arg>) {
        if grid > 0 {
            let kernel = format!("{name}_{}", self.req.dtype.suffix());
            self.launches.push(Launch { kernel, module, grid, args });
        }
    }
}

/// Names of the pointer arguments of each operation (their order is the kernel's), which of them hold
/// 2-D blocks read/written as pairs (alignment 2·itemsize), and the number of sizes and scalars.
fn signature(op: &str) -> Result<(&'static [&'static str], &'static [&'static str], usize, usize)> {
    Ok(match op {
        "score_fwd" => (&["v_i", "v_j", "gate", "out"], &["v_i", "v_j"], 2, 0),
        "score_bwd" => (
            &["grad", "v_i", "v_j", "gate", "grad_v_i", "grad_v_j", "grad_gate"],
            &["v_i", "v_j", "grad_v_i", "grad_v_j"],
            2,
            0,
        ),
        "matrix_fwd" => (&["v", "gate", "out"], &["v", "out"], 3, 0),
        "matrix_bwd" => (&["grad", "v", "gate", "grad_v", "grad_gate"], &["v", "grad_v"], 3, 0),
        "win_fwd" => (&["v", "weights", "gate", "scratch", "out"], &["v"], 3, 0),
        "win_bwd" => (
            &["grad", "v", "weights", "gate", "scratch", "grad_v", "grad_weights", "grad_gate"],
            &["v", "grad_v"],
            3,
            0,
        ),
        "gpm_fwd" => (
            &["v_chosen", "v_rejected", "gate", "margin", "label", "loss", "scratch"],
            &["v_chosen", "v_rejected"],
            2,
            2,
        ),
        "gpm_bwd" => (
            &[
                "grad",
                "v_chosen",
                "v_rejected",
                "gate",
                "margin",
                "label",
                "grad_chosen",
                "grad_rejected",
                "grad_gate",
                "grad_margin",
                "grad_label",
            ],
            &["v_chosen", "v_rejected", "grad_chosen", "grad_rejected"],
            2,
            2,
        ),
        "bt_fwd" => (&["r_chosen", "r_rejected", "margin", "label", "loss", "scratch"], &[], 1, 2),
        "bt_bwd" => (
            &[
                "grad",
                "r_chosen",
                "r_rejected",
                "margin",
                "label",
                "grad_chosen",
                "grad_rejected",
                "grad_margin",
                "grad_label",
            ],
            &[],
            1,
            2,
        ),
        "policy_fwd" => (&["logp", "ref_logp", "target", "lengths", "loss", "scratch"], &[], 1, 5),
        "policy_bwd" => (
            &[
                "grad",
                "logp",
                "ref_logp",
                "target",
                "lengths",
                "grad_logp",
                "grad_ref_logp",
                "grad_target",
                "grad_lengths",
            ],
            &[],
            1,
            5,
        ),
        _ => {
            return Err(GpmError::value(
                "op",
                "one of score_fwd/bwd, matrix_fwd/bwd, win_fwd/bwd, gpm_fwd/bwd, bt_fwd/bwd, policy_fwd/bwd",
                format!("{op:?}"),
            ))
        }
    })
}

/// Grid of the element-wise loss kernels (one thread per row); also their number of partial sums.
fn loss_grid(n: i64) -> u32 {
    grid_for(n)
}

/// Bytes of scratch memory the Python layer must allocate (`torch.empty`) and pass as `scratch`.
pub fn scratch_bytes(op: &str, dtype: DType, sizes: &[i64]) -> Result<u64> {
    let (_, _, n_sizes, _) = signature(op)?;
    check_sizes(op, sizes, n_sizes)?;
    Ok(match op {
        "win_fwd" | "win_bwd" => (sizes[0] * sizes[2]) as u64 * 4 * dtype.acc_size(),
        "gpm_fwd" => u64::from(row_grid(sizes[0], group_size(sizes[1]))) * 8,
        "bt_fwd" | "policy_fwd" => u64::from(loss_grid(sizes[0])) * 8,
        _ => 0,
    })
}

fn check_sizes(op: &str, sizes: &[i64], n_sizes: usize) -> Result<()> {
    if sizes.len() != n_sizes {
        return Err(GpmError::value("sizes", format!("{n_sizes} sizes for {op}"), format!("{}", sizes.len())));
    }
    if let Some(s) = sizes.iter().find(|&&s| s < 0) {
        return Err(GpmError::value("sizes", "non-negative sizes", format!("{s}")));
    }
    // all but the leading (batch) size reach the kernels as 32-bit ints
    if let Some(s) = sizes.iter().skip(1).find(|&&s| s > i64::from(i32::MAX)) {
        return Err(GpmError::value("sizes", "K and k below 2^31", format!("{s}")));
    }
    Ok(())
}

/// Checks a request and turns it into its kernel launches (none when there is nothing to compute; the
/// loss reductions of an empty batch still run the finishing kernel, which writes NaN for 'mean' and 0
/// for 'sum').
pub fn plan(req: &Request<'_>) -> Result<Vec<Launch>> {
    let (names, paired, n_sizes, n_scalars) = signature(req.op)?;
    if req.ptrs.len() != names.len() {
        return Err(GpmError::value(
            "ptrs",
            format!("{} pointers ({}) for {}", names.len(), names.join(", "), req.op),
            format!("{}", req.ptrs.len()),
        ));
    }
    check_sizes(req.op, req.sizes, n_sizes)?;
    if req.scalars.len() != n_scalars {
        return Err(GpmError::value(
            "scalars",
            format!("{n_scalars} scalars for {}", req.op),
            format!("{}", req.scalars.len()),
        ));
    }
    for (name, &p) in names.iter().zip(req.ptrs) {
        let align = if paired.contains(name) { 2 * req.dtype.size() } else { req.dtype.size() };
        if p % align != 0 {
            return Err(GpmError::value(name, format!("a device pointer aligned to {align} bytes"), format!("{p:#x}")));
        }
    }
    let p = |name: &str| -> u64 { req.ptrs[names.iter().position(|n| *n == name).expect("known name")] };
    let ptr = |name: &str| Arg::Ptr(p(name));
    // the pointers in signature order (= the kernel's, for the ops with one kernel), from pointer `from` on
    let ptrs_from = |from: usize| -> Vec<Arg> { req.ptrs[from..].iter().map(|&q| Arg::Ptr(q)).collect() };
    let mut b = Builder { req, launches: Vec::new() };
    let s = req.sizes;
    match req.op {
        "score_fwd" | "gpm_fwd" | "gpm_bwd" | "score_bwd" => {
            let (n, k) = (s[0], s[1]);
            let g = group_size(k);
            match req.op {
                "score_fwd" => {
                    let args = [ptrs_from(0), vec![Arg::I64(n), Arg::I32(k as i32), Arg::I32(g)]].concat();
                    b.push("score_fwd", Module::Score, row_grid(n, g), args);
                }
                "score_bwd" => {
                    let args = [ptrs_from(0), vec![Arg::I64(n), Arg::I32(k as i32)]].concat();
                    b.push("score_bwd", Module::Score, grid_for(n * k), args);
                }
                "gpm_fwd" => {
                    let (inv_tau, red) = loss_params(req.scalars)?;
                    let grid = row_grid(n, g);
                    let mode = i32::from(red != Reduce::None);
                    let mut args = ptrs_from(0);
                    args.extend([Arg::I64(n), Arg::I32(k as i32), Arg::I32(g), Arg::F64(inv_tau), Arg::I32(mode)]);
                    b.push("gpm_fwd", Module::Loss, grid, args);
                    finish(&mut b, red, n, grid, p("scratch"), p("loss"));
                }
                _ => {
                    let (inv_tau, red) = loss_params(req.scalars)?;
                    let mut args = bwd_head(p("grad"), red, n);
                    args.extend(ptrs_from(1));
                    args.extend([Arg::I64(n), Arg::I32(k as i32), Arg::I32(g), Arg::F64(inv_tau)]);
                    b.push("gpm_bwd", Module::Loss, row_grid(n, g), args);
                }
            }
        }
        "matrix_fwd" | "matrix_bwd" | "win_fwd" | "win_bwd" => {
            let (bb, kk, k) = (s[0], s[1], s[2]);
            let dims = [Arg::I64(bb), Arg::I32(kk as i32), Arg::I32(k as i32)];
            let g = group_size(k);
            match req.op {
                "matrix_fwd" => {
                    let args = [ptrs_from(0), dims.to_vec()].concat();
                    b.push("matrix_fwd", Module::Score, grid_for(bb * kk * kk), args);
                }
                "matrix_bwd" => {
                    if p("grad_v") != 0 {
                        let args = [vec![ptr("grad"), ptr("v"), ptr("gate"), ptr("grad_v")], dims.to_vec()].concat();
                        b.push("matrix_bwd_v", Module::Score, grid_for(bb * kk * k), args);
                    }
                    if p("grad_gate") != 0 {
                        let args = [vec![ptr("grad"), ptr("v"), ptr("grad_gate")], dims.to_vec()].concat();
                        b.push("matrix_bwd_gate", Module::Score, grid_for(bb * k), args);
                    }
                }
                "win_fwd" => {
                    let stats = vec![ptr("v"), ptr("weights"), Arg::Ptr(0), ptr("scratch"), Arg::Ptr(0)];
                    b.push("win_stats", Module::Score, grid_for(bb * k), [stats, dims.to_vec()].concat());
                    let args = vec![ptr("v"), ptr("gate"), ptr("scratch"), ptr("out")];
                    b.push(
                        "win_fwd",
                        Module::Score,
                        grid_for(bb * kk * i64::from(g)),
                        [args, dims.to_vec(), vec![Arg::I32(g)]].concat(),
                    );
                }
                _ => {
                    let stats = vec![ptr("v"), ptr("weights"), ptr("grad"), ptr("scratch"), ptr("grad_gate")];
                    b.push("win_stats", Module::Score, grid_for(bb * k), [stats, dims.to_vec()].concat());
                    if p("grad_v") != 0 || p("grad_weights") != 0 {
                        let args =
                            ["grad", "v", "weights", "gate", "scratch", "grad_v", "grad_weights"].map(ptr).to_vec();
                        let grid = grid_for(bb * kk * i64::from(g));
                        b.push("win_bwd", Module::Score, grid, [args, dims.to_vec(), vec![Arg::I32(g)]].concat());
                    }
                }
            }
        }
        "bt_fwd" | "bt_bwd" => {
            let n = s[0];
            let (inv_tau, red) = loss_params(req.scalars)?;
            if req.op == "bt_fwd" {
                let grid = loss_grid(n);
                let mut args = ptrs_from(0);
                args.extend([Arg::I64(n), Arg::F64(inv_tau), Arg::I32(i32::from(red != Reduce::None))]);
                b.push("bt_fwd", Module::Loss, grid, args);
                finish(&mut b, red, n, grid, p("scratch"), p("loss"));
            } else {
                let mut args = bwd_head(p("grad"), red, n);
                args.extend(ptrs_from(1));
                args.extend([Arg::I64(n), Arg::F64(inv_tau)]);
                b.push("bt_bwd", Module::Loss, grid_for(n), args);
            }
        }
        _ => {
            // policy_fwd / policy_bwd: scalars [beta, offset, gamma, clamp (< 0: none), reduction]
            let n = s[0];
            let sc = req.scalars;
            let (beta, offset, gamma, clamp) = (sc[0], sc[1], sc[2], sc[3]);
            if !(beta.is_finite() && beta > 0.0) {
                return Err(GpmError::value("beta", "a finite number > 0", format!("{beta}")));
            }
            if !gamma.is_finite() {
                return Err(GpmError::value("gamma", "a finite number", format!("{gamma}")));
            }
            let red = Reduce::from_code(sc[4])?;
            // lengths only matter for γ ≠ 0 (then ∂/∂lengths is written as 0 where unused)
            let lengths = if gamma != 0.0 { p("lengths") } else { 0 };
            let params = [
                Arg::F64(beta),
                Arg::F64(offset),
                Arg::F64(gamma),
                Arg::F64(if clamp.is_nan() { -1.0 } else { clamp }),
            ];
            if req.op == "policy_fwd" {
                let grid = loss_grid(n);
                let mut args =
                    vec![ptr("logp"), ptr("ref_logp"), ptr("target"), Arg::Ptr(lengths), ptr("loss"), ptr("scratch")];
                args.push(Arg::I64(n));
                args.extend(params);
                args.push(Arg::I32(i32::from(red != Reduce::None)));
                b.push("policy_fwd", Module::Loss, grid, args);
                finish(&mut b, red, n, grid, p("scratch"), p("loss"));
            } else {
                let mut args = bwd_head(p("grad"), red, n);
                args.extend([ptr("logp"), ptr("ref_logp"), ptr("target"), Arg::Ptr(lengths)]);
                args.extend(["grad_logp", "grad_ref_logp", "grad_target", "grad_lengths"].map(ptr));
                args.push(Arg::I64(n));
                args.extend(params);
                b.push("policy_bwd", Module::Loss, grid_for(n), args);
            }
        }
    }
    Ok(b.launches)
}

/// `[tau, reduction]` → `(1/τ, reduction)`.
fn loss_params(scalars: &[f64]) -> Result<(f64, Reduce)> {
    let tau = scalars[0];
    if !(tau.is_finite() && tau > 0.0) {
        return Err(GpmError::value("tau", "a finite number > 0", format!("{tau}")));
    }
    Ok((1.0 / tau, Reduce::from_code(scalars[1])?))
}

/// The upstream-gradient arguments of a loss backward: per row for 'none', one scalar (× 1/N for
/// 'mean') otherwise.
fn bwd_head(grad: u64, red: Reduce, n: i64) -> Vec<Arg> {
    let (stride, scale) = match red {
        Reduce::None => (1, 1.0),
        Reduce::Mean => (0, if n > 0 { 1.0 / n as f64 } else { 0.0 }),
        Reduce::Sum => (0, 1.0),
    };
    vec![Arg::Ptr(grad), Arg::I32(stride), Arg::F64(scale)]
}

/// The second launch of a reduced loss: sum the `parts` partials in order and divide.
fn finish(b: &mut Builder<'_>, red: Reduce, n: i64, parts: u32, scratch: u64, loss: u64) {
    let divisor = match red {
        Reduce::None => return,
        Reduce::Mean => n as f64, // 0/0 = NaN for an empty batch, as torch's mean
        Reduce::Sum => 1.0,
    };
    let args = vec![Arg::Ptr(scratch), Arg::I32(parts as i32), Arg::F64(divisor), Arg::Ptr(loss)];
    b.push("loss_finish", Module::Loss, 1, args);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(op: &'a str, ptrs: &'a [u64], sizes: &'a [i64], scalars: &'a [f64]) -> Request<'a> {
        Request { op, dtype: DType::F32, ptrs, sizes, scalars }
    }

    #[test]
    fn group_size_is_the_next_power_of_two_up_to_a_warp() {
        let got: Vec<i32> = [0, 1, 2, 3, 4, 5, 8, 9, 31, 32, 33, 1000].iter().map(|&k| group_size(k)).collect();
        assert_eq!(got, [1, 1, 2, 4, 4, 8, 8, 16, 32, 32, 32, 32]);
    }

    #[test]
    fn grid_covers_the_work_and_is_capped() {
        assert_eq!(grid_for(0), 0);
        assert_eq!(grid_for(1), 1);
        assert_eq!(grid_for(256), 1);
        assert_eq!(grid_for(257), 2);
        assert_eq!(grid_for(1 << 40), MAX_GRID);
        // pair rows: ⌈n / UNROLL⌉ groups of `lanes` threads
        assert_eq!(row_grid(0, 4), 0);
        assert_eq!(row_grid(1, 1), 1);
        assert_eq!(row_grid(1024, 1), 1);
        assert_eq!(row_grid(1025, 1), 2);
        assert_eq!(row_grid(1 << 22, 4), MAX_GRID);
    }

    #[test]
    fn gpm_mean_is_one_fused_pass_plus_an_ordered_finish() {
        // n = 1000 pairs of k = 4 blocks → 4 lanes per pair, 4 pairs per group and round: 1000 threads
        // → 4 blocks → 4 partials.
        let ptrs = [256, 512, 0, 0, 0, 1024, 2048];
        let l = plan(&req("gpm_fwd", &ptrs, &[1000, 4], &[0.1, 1.0])).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].kernel.as_str(), l[0].grid), ("gpm_fwd_f32", 4));
        assert_eq!(l[0].args[7..], [Arg::I64(1000), Arg::I32(4), Arg::I32(4), Arg::F64(10.0), Arg::I32(1)]);
        assert_eq!(l[1].kernel, "loss_finish_f32");
        assert_eq!(l[1].args, [Arg::Ptr(2048), Arg::I32(4), Arg::F64(1000.0), Arg::Ptr(1024)]);
        assert_eq!(scratch_bytes("gpm_fwd", DType::F32, &[1000, 4]).unwrap(), 4 * 8);
        // 'none' writes per-pair losses and needs no finish
        let l = plan(&req("gpm_fwd", &ptrs, &[1000, 4], &[0.1, 0.0])).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].args[11], Arg::I32(0));
    }

    #[test]
    fn empty_batches_launch_only_the_finish() {
        let ptrs = [0, 0, 0, 0, 0, 1024, 2048];
        let l = plan(&req("gpm_fwd", &ptrs, &[0, 4], &[0.1, 1.0])).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].args[1..3], [Arg::I32(0), Arg::F64(0.0)]); // 0/0: NaN like torch.mean
        assert!(plan(&req("gpm_fwd", &ptrs, &[0, 4], &[0.1, 0.0])).unwrap().is_empty());
        assert!(plan(&req("score_fwd", &[0, 0, 0, 0], &[0, 3], &[])).unwrap().is_empty());
    }

    #[test]
    fn backward_scales_the_scalar_upstream_gradient() {
        let ptrs = [8, 16, 32, 0, 0, 0, 64, 128, 0, 0, 0];
        let l = plan(&req("gpm_bwd", &ptrs, &[10, 1], &[0.5, 1.0])).unwrap();
        assert_eq!(l[0].args[..3], [Arg::Ptr(8), Arg::I32(0), Arg::F64(0.1)]);
        let l = plan(&req("gpm_bwd", &ptrs, &[10, 1], &[0.5, 0.0])).unwrap();
        assert_eq!(l[0].args[..3], [Arg::Ptr(8), Arg::I32(1), Arg::F64(1.0)]);
        assert_eq!(l[0].args.last(), Some(&Arg::F64(2.0)));
    }

    #[test]
    fn matrix_and_win_backward_launch_only_what_is_needed() {
        let l = plan(&req("matrix_bwd", &[8, 16, 0, 32, 0], &[3, 5, 2], &[])).unwrap();
        assert_eq!(l.iter().map(|l| l.kernel.as_str()).collect::<Vec<_>>(), ["matrix_bwd_v_f32"]);
        let l = plan(&req("win_bwd", &[8, 16, 0, 32, 64, 0, 0, 128], &[3, 5, 2], &[])).unwrap();
        assert_eq!(l.iter().map(|l| l.kernel.as_str()).collect::<Vec<_>>(), ["win_stats_f32"]);
        let l = plan(&req("win_fwd", &[8, 0, 0, 64, 128], &[3, 5, 2], &[])).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(scratch_bytes("win_fwd", DType::F64, &[3, 5, 2]).unwrap(), 3 * 2 * 4 * 8);
    }

    #[test]
    fn policy_drops_lengths_when_gamma_is_zero() {
        let ptrs = [8, 16, 32, 40, 48, 64];
        let l = plan(&req("policy_fwd", &ptrs, &[7], &[0.5, 0.0, 0.0, f64::NAN, 2.0])).unwrap();
        assert_eq!(l[0].args[3], Arg::Ptr(0));
        assert_eq!(l[0].args[10], Arg::F64(-1.0)); // no clamp
        let l = plan(&req("policy_fwd", &ptrs, &[7], &[0.5, 0.0, 1.0, 2.0, 2.0])).unwrap();
        assert_eq!((l[0].args[3], l[0].args[10]), (Arg::Ptr(40), Arg::F64(2.0)));
        assert_eq!(l[1].args[2], Arg::F64(1.0)); // 'sum' divides by 1
    }

    #[test]
    fn bad_requests_are_typed_errors_naming_the_argument() {
        let e = plan(&req("gpm_fwd", &[0; 6], &[1, 1], &[0.1, 1.0])).unwrap_err().to_string();
        assert!(e.contains("ptrs") && e.contains("7 pointers"), "{e}");
        let e = plan(&req("score_fwd", &[4, 8, 0, 8], &[1, 1], &[])).unwrap_err().to_string();
        assert!(e.contains("v_i") && e.contains("aligned to 8"), "{e}");
        // the matrix kernel stores two outputs at a time (four-entry path): `out` must be pair-aligned too
        let e = plan(&req("matrix_fwd", &[8, 0, 12], &[1, 4, 1], &[])).unwrap_err().to_string();
        assert!(e.contains("out") && e.contains("aligned to 8"), "{e}");
        let e = plan(&req("gpm_fwd", &[0; 7], &[1, 1], &[0.0, 1.0])).unwrap_err().to_string();
        assert!(e.contains("tau"), "{e}");
        let e = plan(&req("gpm_fwd", &[0; 7], &[1, 1], &[0.1, 3.0])).unwrap_err().to_string();
        assert!(e.contains("reduction"), "{e}");
        let e = plan(&req("nope", &[], &[], &[])).unwrap_err().to_string();
        assert!(e.contains("op"), "{e}");
        let e = plan(&req("bt_fwd", &[0; 6], &[-1], &[1.0, 1.0])).unwrap_err().to_string();
        assert!(e.contains("sizes"), "{e}");
        assert!(DType::parse("f8").is_err());
    }
}
