// GPM / Bradley-Terry and GPO / SPPO losses: fused forward (score + loss + reduction) and backward.
//
//   GPM/BT:  z = (s − m)/τ,  ℓ = −[p log σ(z) + (1 − p) log σ(−z)] = softplus(−z) + (1 − p) z
//            ∂ℓ/∂s = (σ(z) − p)/τ,  ∂ℓ/∂m = −∂ℓ/∂s,  ∂ℓ/∂p = −z
//   policy:  e = (logπ − logπ_ref)·|y|^{−γ} − clamp((t − offset)/β, ±c),  ℓ = e²
//
// `mode` 0 writes ℓ per row into `loss`; mode 1 writes one double partial sum per block into `partials`,
// which loss_finish then sums in index order (deterministic; see common.cuh). Backward reads the upstream
// gradient `grad` per row (grad_stride 1, reduction 'none') or once (grad_stride 0) times `scale` (1/N for
// 'mean', 1 for 'sum') and recomputes the score instead of storing it: forward reads each input once,
// backward reads it once more and writes each gradient once. Null margin/label/gate/gradient pointers mean
// m = 0 / p = 1 / λ = 1 / "not needed".
#include "common.cuh"

template <typename A>
__device__ __forceinline__ A pair_loss(A s, const A m, const A p, const A inv_tau, A* z_out, A* sig_out) {
    const A z = (s - m) * inv_tau;
    A sig;
    const A sp = softplus_neg(z, &sig);
    *z_out = z;
    *sig_out = sig;
    return sp + (A(1) - p) * z;
}

template <typename T>
__device__ __forceinline__ void finish_rows(int mode, double acc, double* partials) {
    if (mode == 1) {
        const double total = block_sum(acc);
        if (threadIdx.x == 0) partials[blockIdx.x] = total;
    }
}

template <typename T>
__device__ void gpm_fwd(const T* __restrict__ vc, const T* __restrict__ vr, const T* __restrict__ gate,
                        const T* __restrict__ margin, const T* __restrict__ label, T* __restrict__ loss,
                        double* __restrict__ partials, int64_t n, int k, int G, double inv_tau, int mode) {
    typedef typename Acc<T>::type A;
    double acc = 0.0;
    FOR_ROW_BATCHES(n, G) {
        A s[GPM_UNROLL], m[GPM_UNROLL], p[GPM_UNROLL];
#pragma unroll
        for (int u = 0; u < GPM_UNROLL; ++u) {  // issued together with the row loads below
            const int64_t row = row0 + u * row_step;
            m[u] = (margin && row < n && lane == 0) ? to_acc(margin[row]) : A(0);
            p[u] = (label && row < n && lane == 0) ? to_acc(label[row]) : A(1);
        }
        lane_scores(vc, vr, gate, n, k, G, lane, row0, row_step, s);
#pragma unroll
        for (int u = 0; u < GPM_UNROLL; ++u) {
            const int64_t row = row0 + u * row_step;
            const A total = group_sum(s[u], G);
            if (row < n && lane == 0) {
                A z, sig;
                const A l = pair_loss(total, m[u], p[u], A(inv_tau), &z, &sig);
                if (mode == 0) loss[row] = from_acc<T>(l);
                else acc += (double)l;
            }
        }
    }
    finish_rows<T>(mode, acc, partials);
}
#define GPM_FWD_PARAMS(T)                                                                                  \
    (const T* vc, const T* vr, const T* gate, const T* margin, const T* label, T* loss, double* partials, \
     int64_t n, int k, int G, double inv_tau, int mode)
INSTANTIATE(gpm_fwd, GPM_FWD_PARAMS, (vc, vr, gate, margin, label, loss, partials, n, k, G, inv_tau, mode))

template <typename T>
__device__ void gpm_bwd(const T* __restrict__ grad, int grad_stride, double scale, const T* __restrict__ vc,
                        const T* __restrict__ vr, const T* __restrict__ gate, const T* __restrict__ margin,
                        const T* __restrict__ label, T* __restrict__ gc, T* __restrict__ gr, T* __restrict__ gg,
                        T* __restrict__ gm, T* __restrict__ gl, int64_t n, int k, int G, double inv_tau) {
    typedef typename Acc<T>::type A;
    FOR_ROW_BATCHES(n, G) {
        A m[GPM_UNROLL], p[GPM_UNROLL], g[GPM_UNROLL];
#pragma unroll
        for (int u = 0; u < GPM_UNROLL; ++u) {
            const int64_t row = row0 + u * row_step;
            const bool ok = row < n;
            m[u] = (margin && ok) ? to_acc(margin[row]) : A(0);
            p[u] = (label && ok) ? to_acc(label[row]) : A(1);
            g[u] = ok ? to_acc(grad[row * grad_stride]) * A(scale) : A(0);
        }
        if (k <= 32) {  // the lane's block stays in registers from the score to its gradient
            P2<A> a[GPM_UNROLL], b[GPM_UNROLL];
            A lam[GPM_UNROLL];
            load_lane_blocks(vc, vr, gate, n, k, lane, row0, row_step, a, b, lam);
#pragma unroll
            for (int u = 0; u < GPM_UNROLL; ++u) {
                const int64_t row = row0 + u * row_step;
                const A t = a[u].x * b[u].y - a[u].y * b[u].x;
                const A s = group_sum(lam[u] * t, G);
                A z, sig;
                pair_loss(s, m[u], p[u], A(inv_tau), &z, &sig);
                const A coef = g[u] * (sig - p[u]) * A(inv_tau);  // ∂ℓ/∂s times the upstream gradient
                if (row < n && lane < k) {
                    const int64_t o = (row * k + lane) * 2;
                    const A cl = coef * lam[u];
                    if (gc) store2(gc + o, cl * b[u].y, -cl * b[u].x);
                    if (gr) store2(gr + o, -cl * a[u].y, cl * a[u].x);
                    if (gg) gg[row * k + lane] = from_acc<T>(coef * t);
                }
                if (row < n && lane == 0) {
                    if (gm) gm[row] = from_acc<T>(-coef);
                    if (gl) gl[row] = from_acc<T>(-z * g[u]);
                }
            }
        } else {
            A s[GPM_UNROLL];
            lane_scores(vc, vr, gate, n, k, G, lane, row0, row_step, s);
#pragma unroll
            for (int u = 0; u < GPM_UNROLL; ++u) {
                const int64_t row = row0 + u * row_step;
                const A total = group_sum(s[u], G);
                if (row >= n) continue;
                A z, sig;
                pair_loss(total, m[u], p[u], A(inv_tau), &z, &sig);
                const A coef = g[u] * (sig - p[u]) * A(inv_tau);
                for (int l = lane; l < k; l += G) {
                    const int64_t o = (row * k + l) * 2;
                    P2<A> a = load2(vc + o), b = load2(vr + o);
                    const A lam = gate ? to_acc(gate[row * k + l]) : A(1);
                    const A cl = coef * lam;
                    if (gc) store2(gc + o, cl * b.y, -cl * b.x);
                    if (gr) store2(gr + o, -cl * a.y, cl * a.x);
                    if (gg) gg[row * k + l] = from_acc<T>(coef * (a.x * b.y - a.y * b.x));
                }
                if (lane == 0) {
                    if (gm) gm[row] = from_acc<T>(-coef);
                    if (gl) gl[row] = from_acc<T>(-z * g[u]);
                }
            }
        }
    }
}
#define GPM_BWD_PARAMS(T)                                                                                    \
    (const T* grad, int grad_stride, double scale, const T* vc, const T* vr, const T* gate, const T* margin, \
     const T* label, T* gc, T* gr, T* gg, T* gm, T* gl, int64_t n, int k, int G, double inv_tau)
INSTANTIATE(gpm_bwd, GPM_BWD_PARAMS,
            (grad, grad_stride, scale, vc, vr, gate, margin, label, gc, gr, gg, gm, gl, n, k, G, inv_tau))

// Bradley-Terry: s = r_chosen − r_rejected, one thread per pair.
template <typename T>
__device__ void bt_fwd(const T* __restrict__ rc, const T* __restrict__ rr, const T* __restrict__ margin,
                       const T* __restrict__ label, T* __restrict__ loss, double* __restrict__ partials, int64_t n,
                       double inv_tau, int mode) {
    typedef typename Acc<T>::type A;
    double acc = 0.0;
    FOR_ITEMS(row, n) {
        A z, sig;
        const A m = margin ? to_acc(margin[row]) : A(0), p = label ? to_acc(label[row]) : A(1);
        const A l = pair_loss(to_acc(rc[row]) - to_acc(rr[row]), m, p, A(inv_tau), &z, &sig);
        if (mode == 0) loss[row] = from_acc<T>(l);
        else acc += (double)l;
    }
    finish_rows<T>(mode, acc, partials);
}
#define BT_FWD_PARAMS(T) \
    (const T* rc, const T* rr, const T* margin, const T* label, T* loss, double* partials, int64_t n, double inv_tau, int mode)
INSTANTIATE(bt_fwd, BT_FWD_PARAMS, (rc, rr, margin, label, loss, partials, n, inv_tau, mode))

template <typename T>
__device__ void bt_bwd(const T* __restrict__ grad, int grad_stride, double scale, const T* __restrict__ rc,
                       const T* __restrict__ rr, const T* __restrict__ margin, const T* __restrict__ label,
                       T* __restrict__ gc, T* __restrict__ gr, T* __restrict__ gm, T* __restrict__ gl, int64_t n,
                       double inv_tau) {
    typedef typename Acc<T>::type A;
    FOR_ITEMS(row, n) {
        A z, sig;
        const A m = margin ? to_acc(margin[row]) : A(0), p = label ? to_acc(label[row]) : A(1);
        pair_loss(to_acc(rc[row]) - to_acc(rr[row]), m, p, A(inv_tau), &z, &sig);
        const A g = to_acc(grad[row * grad_stride]) * A(scale);
        const A coef = g * (sig - p) * A(inv_tau);
        if (gc) gc[row] = from_acc<T>(coef);
        if (gr) gr[row] = from_acc<T>(-coef);
        if (gm) gm[row] = from_acc<T>(-coef);
        if (gl) gl[row] = from_acc<T>(-z * g);
    }
}
#define BT_BWD_PARAMS(T)                                                                                       \
    (const T* grad, int grad_stride, double scale, const T* rc, const T* rr, const T* margin, const T* label, \
     T* gc, T* gr, T* gm, T* gl, int64_t n, double inv_tau)
INSTANTIATE(bt_bwd, BT_BWD_PARAMS, (grad, grad_stride, scale, rc, rr, margin, label, gc, gr, gm, gl, n, inv_tau))

// GPO / SPPO. `clamp` < 0 means no clamp; lengths are used only when given and γ ≠ 0.
template <typename A>
__device__ __forceinline__ A policy_err(A lp, A rl, A tg, const A* len, A beta, A offset, A gamma, A clamp, A* norm,
                                        A* delta, bool* pass) {
    *delta = lp - rl;
    *norm = len ? pow(*len, -gamma) : A(1);
    const A raw = (tg - offset) / beta;
    A t = raw;
    *pass = true;
    if (clamp >= A(0)) {
        t = fmin(fmax(raw, -clamp), clamp);
        *pass = raw >= -clamp && raw <= clamp;
    }
    return *delta * *norm - t;
}

template <typename T>
__device__ void policy_fwd(const T* __restrict__ lp, const T* __restrict__ rl, const T* __restrict__ tg,
                           const T* __restrict__ len, T* __restrict__ loss, double* __restrict__ partials, int64_t n,
                           double beta, double offset, double gamma, double clamp, int mode) {
    typedef typename Acc<T>::type A;
    double acc = 0.0;
    FOR_ITEMS(row, n) {
        A norm, delta, lv;
        bool pass;
        if (len) lv = to_acc(len[row]);
        const A e = policy_err(to_acc(lp[row]), to_acc(rl[row]), to_acc(tg[row]), len ? &lv : (const A*)nullptr,
                               A(beta), A(offset), A(gamma), A(clamp), &norm, &delta, &pass);
        if (mode == 0) loss[row] = from_acc<T>(e * e);
        else acc += (double)(e * e);
    }
    finish_rows<T>(mode, acc, partials);
}
#define POLICY_FWD_PARAMS(T)                                                                                \
    (const T* lp, const T* rl, const T* tg, const T* len, T* loss, double* partials, int64_t n, double beta, \
     double offset, double gamma, double clamp, int mode)
INSTANTIATE(policy_fwd, POLICY_FWD_PARAMS, (lp, rl, tg, len, loss, partials, n, beta, offset, gamma, clamp, mode))

template <typename T>
__device__ void policy_bwd(const T* __restrict__ grad, int grad_stride, double scale, const T* __restrict__ lp,
                           const T* __restrict__ rl, const T* __restrict__ tg, const T* __restrict__ len,
                           T* __restrict__ g_lp, T* __restrict__ g_rl, T* __restrict__ g_tg, T* __restrict__ g_len,
                           int64_t n, double beta, double offset, double gamma, double clamp) {
    typedef typename Acc<T>::type A;
    FOR_ITEMS(row, n) {
        A norm, delta, lv;
        bool pass;
        if (len) lv = to_acc(len[row]);
        const A e = policy_err(to_acc(lp[row]), to_acc(rl[row]), to_acc(tg[row]), len ? &lv : (const A*)nullptr,
                               A(beta), A(offset), A(gamma), A(clamp), &norm, &delta, &pass);
        const A ge = A(2) * e * to_acc(grad[row * grad_stride]) * A(scale);
        if (g_lp) g_lp[row] = from_acc<T>(ge * norm);
        if (g_rl) g_rl[row] = from_acc<T>(-(ge * norm));
        if (g_tg) g_tg[row] = from_acc<T>(pass ? -ge / A(beta) : A(0));
        if (g_len) g_len[row] = from_acc<T>(len ? ge * A(-gamma) * delta * norm / lv : A(0));
    }
}
#define POLICY_BWD_PARAMS(T)                                                                                      \
    (const T* grad, int grad_stride, double scale, const T* lp, const T* rl, const T* tg, const T* len, T* g_lp, \
     T* g_rl, T* g_tg, T* g_len, int64_t n, double beta, double offset, double gamma, double clamp)
INSTANTIATE(policy_bwd, POLICY_BWD_PARAMS,
            (grad, grad_stride, scale, lp, rl, tg, len, g_lp, g_rl, g_tg, g_len, n, beta, offset, gamma, clamp))

// Sums the per-block partials in index order (one block) and stores total / divisor as T.
template <typename T>
__device__ void loss_finish(const double* __restrict__ partials, int count, double divisor, T* __restrict__ out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += GPM_BLOCK) acc += partials[i];
    const double total = block_sum(acc);
    if (threadIdx.x == 0) out[0] = from_acc<T>((typename Acc<T>::type)(total / divisor));
}
#define LOSS_FINISH_PARAMS(T) (const double* partials, int count, double divisor, T* out)
INSTANTIATE(loss_finish, LOSS_FINISH_PARAMS, (partials, count, divisor, out))
