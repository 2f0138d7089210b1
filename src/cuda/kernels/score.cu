// Preference scores, K×K preference matrices and win scores: forward and backward.
//
//   s(i ≻ j) = Σ_l λ_l (v_i[2l] v_j[2l+1] − v_i[2l+1] v_j[2l])     (DESIGN §1; λ = 1 without a gate)
//
// Layouts (all contiguous, row-major): pair rows v_i, v_j: [n, 2k], gate [n, k]; populations v: [B, K, 2k],
// gate [B, k], weights [B, K]. A null gate/weights pointer means λ = 1 / w = 1/K; a null gradient pointer
// means "not needed". Launch shapes come from src/cuda/plan.rs.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------------
// pair scores: one group of G lanes per pair

template <typename T>
__device__ void score_fwd(const T* __restrict__ vi, const T* __restrict__ vj, const T* __restrict__ gate,
                          T* __restrict__ out, int64_t n, int k, int G) {
    typedef typename Acc<T>::type A;
    FOR_ROW_BATCHES(n, G) {
        A s[GPM_UNROLL];
        lane_scores(vi, vj, gate, n, k, G, lane, row0, row_step, s);
#pragma unroll
        for (int u = 0; u < GPM_UNROLL; ++u) {
            const int64_t row = row0 + u * row_step;
            const A total = group_sum(s[u], G);
            if (row < n && lane == 0) out[row] = from_acc<T>(total);
        }
    }
}
#define SCORE_FWD_PARAMS(T) (const T* vi, const T* vj, const T* gate, T* out, int64_t n, int k, int G)
INSTANTIATE(score_fwd, SCORE_FWD_PARAMS, (vi, vj, gate, out, n, k, G))

// ∂s/∂v_i = λ (v_j[2l+1], −v_j[2l]), ∂s/∂v_j = λ (−v_i[2l+1], v_i[2l]), ∂s/∂λ_l = the block's term.
// Element-wise over (pair, block): no reduction at all.
template <typename T>
__device__ void score_bwd(const T* __restrict__ grad, const T* __restrict__ vi, const T* __restrict__ vj,
                          const T* __restrict__ gate, T* __restrict__ gvi, T* __restrict__ gvj, T* __restrict__ ggate,
                          int64_t n, int k) {
    typedef typename Acc<T>::type A;
    FOR_ITEMS(e, n * k) {
        const int64_t row = e / k;
        const int l = (int)(e - row * k);
        P2<A> a = load2(vi + 2 * e), b = load2(vj + 2 * e);
        const A g = to_acc(grad[row]);
        const A gl = gate ? g * to_acc(gate[e]) : g;
        if (gvi) store2(gvi + 2 * e, gl * b.y, -gl * b.x);
        if (gvj) store2(gvj + 2 * e, -gl * a.y, gl * a.x);
        if (ggate) ggate[e] = from_acc<T>(g * (a.x * b.y - a.y * b.x));
        (void)l;
    }
}
#define SCORE_BWD_PARAMS(T) \
    (const T* grad, const T* vi, const T* vj, const T* gate, T* gvi, T* gvj, T* ggate, int64_t n, int k)
INSTANTIATE(score_bwd, SCORE_BWD_PARAMS, (grad, vi, vj, gate, gvi, gvj, ggate, n, k))

// ---------------------------------------------------------------------------------------------------
// K×K matrices, three paths chosen by K: four consecutive entries of a row per thread for K ∈ {4, 8, ..., 32}
// (matrix_quad), shared-memory tiles for 32 < K ≤ 64 (matrix_tiles), else one thread per entry M[b, i, j]
// with rows re-read from L1/L2. On an H100 (BENCHMARKS.md, 2026-11-27) the quads beat one entry per thread
// and the tiles at K = 16, the tiles beat the quads at K = 64; other K were not timed. Index arithmetic is
// 32-bit unsigned whenever the count fits (64-bit division is a long software sequence that made this
// write-bound kernel compute-bound). Every path evaluates each entry with the same formula, block by block.
template <typename T>
__device__ __forceinline__ void matrix_entry(const T* __restrict__ v, const T* __restrict__ gate, T* __restrict__ out,
                                             int64_t e, int64_t b, int K, int i, int j, int k) {
    typedef typename Acc<T>::type A;
    const T* vi = v + (b * K + i) * 2 * k;
    const T* vj = v + (b * K + j) * 2 * k;
    A s = 0;
    for (int l = 0; l < k; ++l) {
        P2<A> x = load2(vi + 2 * l), y = load2(vj + 2 * l);
        A t = x.x * y.y - x.y * y.x;
        s += gate ? t * to_acc(gate[b * k + l]) : t;
    }
    out[e] = from_acc<T>(s);
}

// M[b, i, j0 .. j0+3] (K % 4 == 0, j0 % 4 == 0): one load of v_i per block l for four outputs.
template <typename T>
__device__ __forceinline__ void matrix_quad(const T* __restrict__ v, const T* __restrict__ gate, T* __restrict__ out,
                                            int64_t e, int64_t b, int K, int i, int j0, int k) {
    typedef typename Acc<T>::type A;
    const int64_t w = 2 * (int64_t)k;
    const T* vi = v + (b * K + i) * w;
    const T* vj = v + (b * K + j0) * w;
    A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int l = 0; l < k; ++l) {
        const P2<A> x = load2(vi + 2 * l);
        const P2<A> y0 = load2(vj + 2 * l), y1 = load2(vj + w + 2 * l);
        const P2<A> y2 = load2(vj + 2 * w + 2 * l), y3 = load2(vj + 3 * w + 2 * l);
        const A t0 = x.x * y0.y - x.y * y0.x, t1 = x.x * y1.y - x.y * y1.x;
        const A t2 = x.x * y2.y - x.y * y2.x, t3 = x.x * y3.y - x.y * y3.x;
        if (gate) {
            const A g = to_acc(gate[b * k + l]);
            s0 += t0 * g, s1 += t1 * g, s2 += t2 * g, s3 += t3 * g;
        } else {
            s0 += t0, s1 += t1, s2 += t2, s3 += t3;
        }
    }
    store2(out + e, s0, s1);
    store2(out + e + 2, s2, s3);
}

// Populations with 32 < K ≤ 64 whose rows fit MATRIX_TILE_BYTES (any K² ≤ 2·MATRIX_TILE_ENTRIES works): a block handles a tile
// of G = MATRIX_TILE_ENTRIES / K² consecutive prompts (at least one). It stages their rows, contiguous in v,
// in shared memory with coalesced loads, then each thread computes entries t, t + GPM_BLOCK, ... of the
// tile, which are contiguous in `out`: every global load and store is coalesced and each row is read from
// HBM once. Rows are padded to an odd number of 2-element blocks, so the lanes of a warp reading different
// rows hit different banks; (prompt, i, j) and (row, column) advance incrementally, without divisions.
#define MATRIX_TILE_BYTES 16384
#define MATRIX_TILE_ENTRIES 2048

template <typename T>
__device__ void matrix_tiles(const T* __restrict__ v, const T* __restrict__ gate, T* __restrict__ out, int64_t B, int K,
                             int k) {
    typedef typename Acc<T>::type A;
    __shared__ __align__(16) unsigned char raw[MATRIX_TILE_BYTES];
    A* rows = reinterpret_cast<A*>(raw);
    const int kk = K * K, w = 2 * k, ws = (k & 1) ? w : w + 2;
    const int G = kk >= MATRIX_TILE_ENTRIES ? 1 : MATRIX_TILE_ENTRIES / kk;
    // this thread's first (prompt, i, j) and the step of GPM_BLOCK entries; the same for (row, column)
    const int g0 = threadIdx.x / kk, i0 = (threadIdx.x - g0 * kk) / K, j0 = threadIdx.x - g0 * kk - i0 * K;
    const int dg = GPM_BLOCK / kk, di = (GPM_BLOCK - dg * kk) / K, dj = GPM_BLOCK - dg * kk - di * K;
    const int row0 = threadIdx.x / w, col0 = threadIdx.x - row0 * w;
    const int drow = GPM_BLOCK / w, dcol = GPM_BLOCK - drow * w;
    for (int64_t b0 = (int64_t)blockIdx.x * G; b0 < B; b0 += (int64_t)gridDim.x * G) {
        const int groups = (int)min((int64_t)G, B - b0);
        const int count = groups * K * w;
        const T* src = v + b0 * K * w;
        for (int x = threadIdx.x, row = row0, col = col0; x < count; x += GPM_BLOCK) {
            rows[row * ws + col] = to_acc(src[x]);
            row += drow, col += dcol;
            if (col >= w) col -= w, ++row;
        }
        __syncthreads();
        const int entries = groups * kk;
        T* dst = out + b0 * kk;
        for (int t = threadIdx.x, g = g0, i = i0, j = j0; t < entries; t += GPM_BLOCK) {
            const A* vi = rows + (g * K + i) * ws;
            const A* vj = rows + (g * K + j) * ws;
            const T* lam = gate ? gate + (b0 + g) * k : nullptr;
            A s = 0;
            for (int l = 0; l < k; ++l) {
                const P2<A> x = load2(vi + 2 * l), y = load2(vj + 2 * l);
                const A t0 = x.x * y.y - x.y * y.x;
                s += lam ? t0 * to_acc(lam[l]) : t0;
            }
            dst[t] = from_acc<T>(s);
            g += dg, i += di, j += dj;
            if (j >= K) j -= K, ++i;
            if (i >= K) i -= K, ++g;
        }
        __syncthreads();
    }
}

template <typename T>
__device__ void matrix_fwd(const T* __restrict__ v, const T* __restrict__ gate, T* __restrict__ out, int64_t B, int K,
                           int k) {
    typedef typename Acc<T>::type A;
    const int64_t kk = (int64_t)K * K;
    const int64_t step = (int64_t)gridDim.x * GPM_BLOCK;
    const uint32_t first = blockIdx.x * GPM_BLOCK + threadIdx.x;
    // 4 entries per thread for K ∈ {4, 8, ..., 32}: a warp's quads then share few v_j rows (at K = 64 they
    // would touch 32 rows per load, and the tiles are faster); measured on an H100 (BENCHMARKS.md)
    if ((K & 3) == 0 && K <= 32 && B * (kk / 4) <= (int64_t)0xffffffffu - step) {  // q + step cannot wrap
        const uint32_t n = (uint32_t)(B * (kk / 4)), per = (uint32_t)(kk / 4), row = (uint32_t)(K / 4);
        for (uint32_t q = first; q < n; q += (uint32_t)step) {
            const uint32_t b = q / per, r = q - b * per, i = r / row;
            matrix_quad(v, gate, out, 4 * (int64_t)q, b, K, (int)i, (int)(4 * (r - i * row)), k);
        }
        return;
    }
    const int64_t tile_rows = kk >= MATRIX_TILE_ENTRIES ? K : (MATRIX_TILE_ENTRIES / max(kk, (int64_t)1)) * K;
    if (K > 32 && k > 0 && kk <= 2 * MATRIX_TILE_ENTRIES &&
        tile_rows * (2 * (int64_t)k + 2) * (int64_t)sizeof(A) <= MATRIX_TILE_BYTES) {
        matrix_tiles(v, gate, out, B, K, k);
        return;
    }
    if (B * kk <= (int64_t)0xffffffffu - step) {  // e + step cannot wrap
        const uint32_t n = (uint32_t)(B * kk), ukk = (uint32_t)kk, uK = (uint32_t)K;
        for (uint32_t e = first; e < n; e += (uint32_t)step) {
            const uint32_t b = e / ukk, r = e - b * ukk, i = r / uK;
            matrix_entry(v, gate, out, e, b, K, (int)i, (int)(r - i * uK), k);
        }
        return;
    }
    FOR_ITEMS(e, B * kk) {
        const int64_t b = e / kk;
        const int i = (int)((e - b * kk) / K), j = (int)(e - b * kk - (int64_t)i * K);
        matrix_entry(v, gate, out, e, b, K, i, j, k);
    }
}
#define MATRIX_FWD_PARAMS(T) (const T* v, const T* gate, T* out, int64_t B, int K, int k)
INSTANTIATE(matrix_fwd, MATRIX_FWD_PARAMS, (v, gate, out, B, K, k))

// With A = G − Gᵀ and w_i = Σ_j A_ij v_j (per block): ∂/∂v_i = λ (w_i[2l+1], −w_i[2l]). One thread per
// (b, i, l).
template <typename T>
__device__ void matrix_bwd_v(const T* __restrict__ grad, const T* __restrict__ v, const T* __restrict__ gate,
                             T* __restrict__ gv, int64_t B, int K, int k) {
    typedef typename Acc<T>::type A;
    const int64_t per = (int64_t)K * k;
    FOR_ITEMS(e, B * per) {
        const int64_t b = e / per;
        const int i = (int)((e - b * per) / k), l = (int)(e - b * per - (int64_t)i * k);
        const T* g = grad + b * K * K;
        A wx = 0, wy = 0;
        for (int j = 0; j < K; ++j) {
            const A a = to_acc(g[(int64_t)i * K + j]) - to_acc(g[(int64_t)j * K + i]);
            P2<A> y = load2(v + ((b * K + j) * k + l) * 2);
            wx += a * y.x;
            wy += a * y.y;
        }
        const A lam = gate ? to_acc(gate[b * k + l]) : A(1);
        store2(gv + 2 * e, lam * wy, -lam * wx);
    }
}
#define MATRIX_BWD_V_PARAMS(T) (const T* grad, const T* v, const T* gate, T* gv, int64_t B, int K, int k)
INSTANTIATE(matrix_bwd_v, MATRIX_BWD_V_PARAMS, (grad, v, gate, gv, B, K, k))

// ∂/∂λ_l = Σ_ij G_ij (v_i[2l] v_j[2l+1] − v_i[2l+1] v_j[2l]). One thread per (b, l), fixed order.
template <typename T>
__device__ void matrix_bwd_gate(const T* __restrict__ grad, const T* __restrict__ v, T* __restrict__ ggate, int64_t B,
                                int K, int k) {
    typedef typename Acc<T>::type A;
    FOR_ITEMS(e, B * k) {
        const int64_t b = e / k;
        const int l = (int)(e - b * k);
        const T* g = grad + b * K * K;
        A acc = 0;
        for (int i = 0; i < K; ++i) {
            P2<A> x = load2(v + ((b * K + i) * k + l) * 2);
            for (int j = 0; j < K; ++j) {
                P2<A> y = load2(v + ((b * K + j) * k + l) * 2);
                acc += to_acc(g[(int64_t)i * K + j]) * (x.x * y.y - x.y * y.x);
            }
        }
        ggate[e] = from_acc<T>(acc);
    }
}
#define MATRIX_BWD_GATE_PARAMS(T) (const T* grad, const T* v, T* ggate, int64_t B, int K, int k)
INSTANTIATE(matrix_bwd_gate, MATRIX_BWD_GATE_PARAMS, (grad, v, ggate, B, K, k))

// ---------------------------------------------------------------------------------------------------
// win scores ŝ_i = s(v_i ≻ v̄), v̄ = Σ_j w_j v_j. Two launches per direction: per (b, l) statistics into an
// A-typed scratch buffer stats[B, k, 4] = (v̄, u) with u = Σ_i g_i v_i (backward only), then per row.

template <typename T>
__device__ void win_stats(const T* __restrict__ v, const T* __restrict__ w, const T* __restrict__ grad,
                          typename Acc<T>::type* __restrict__ stats, T* __restrict__ ggate, int64_t B, int K, int k) {
    typedef typename Acc<T>::type A;
    FOR_ITEMS(e, B * k) {
        const int64_t b = e / k;
        const int l = (int)(e - b * k);
        A bx = 0, by = 0, ux = 0, uy = 0;
        const A uniform = A(1) / A(K);
        for (int j = 0; j < K; ++j) {
            P2<A> y = load2(v + ((b * K + j) * k + l) * 2);
            const A wj = w ? to_acc(w[b * K + j]) : uniform;
            bx += wj * y.x;
            by += wj * y.y;
            if (grad) {
                const A gj = to_acc(grad[b * K + j]);
                ux += gj * y.x;
                uy += gj * y.y;
            }
        }
        stats[4 * e] = bx;
        stats[4 * e + 1] = by;
        stats[4 * e + 2] = ux;
        stats[4 * e + 3] = uy;
        if (ggate) ggate[e] = from_acc<T>(ux * by - uy * bx);
    }
}
#define WIN_STATS_PARAMS(T) \
    (const T* v, const T* w, const T* grad, typename Acc<T>::type* stats, T* ggate, int64_t B, int K, int k)
INSTANTIATE(win_stats, WIN_STATS_PARAMS, (v, w, grad, stats, ggate, B, K, k))

template <typename T>
__device__ void win_fwd(const T* __restrict__ v, const T* __restrict__ gate, const typename Acc<T>::type* __restrict__ stats,
                        T* __restrict__ out, int64_t B, int K, int k, int G) {
    typedef typename Acc<T>::type A;
    FOR_ROWS(B * K, G) {
        A s = 0;
        if (row < B * K) {
            const int64_t b = row / K;
            for (int l = lane; l < k; l += G) {
                P2<A> a = load2(v + (row * k + l) * 2);
                const A* st = stats + 4 * (b * k + l);
                A t = a.x * st[1] - a.y * st[0];
                s += gate ? t * to_acc(gate[b * k + l]) : t;
            }
        }
        s = group_sum(s, G);
        if (row < B * K && lane == 0) out[row] = from_acc<T>(s);
    }
}
#define WIN_FWD_PARAMS(T) \
    (const T* v, const T* gate, const typename Acc<T>::type* stats, T* out, int64_t B, int K, int k, int G)
INSTANTIATE(win_fwd, WIN_FWD_PARAMS, (v, gate, stats, out, B, K, k, G))

// ∂/∂v_i = λ (g_i (v̄[2l+1], −v̄[2l]) + w_i (−u[2l+1], u[2l])); ∂/∂w_i = Σ_l λ_l (v_i[2l+1] u[2l] − v_i[2l] u[2l+1]).
template <typename T>
__device__ void win_bwd(const T* __restrict__ grad, const T* __restrict__ v, const T* __restrict__ w,
                        const T* __restrict__ gate, const typename Acc<T>::type* __restrict__ stats, T* __restrict__ gv,
                        T* __restrict__ gw, int64_t B, int K, int k, int G) {
    typedef typename Acc<T>::type A;
    FOR_ROWS(B * K, G) {
        A sw = 0;
        if (row < B * K) {
            const int64_t b = row / K;
            const A gi = to_acc(grad[row]);
            const A wi = w ? to_acc(w[row]) : A(1) / A(K);
            for (int l = lane; l < k; l += G) {
                const A* st = stats + 4 * (b * k + l);
                const A lam = gate ? to_acc(gate[b * k + l]) : A(1);
                if (gv) store2(gv + (row * k + l) * 2, lam * (gi * st[1] - wi * st[3]), lam * (wi * st[2] - gi * st[0]));
                if (gw) {
                    P2<A> a = load2(v + (row * k + l) * 2);
                    sw += lam * (a.y * st[2] - a.x * st[3]);
                }
            }
        }
        if (gw) {  // uniform across the grid, so every lane reaches the shuffles
            sw = group_sum(sw, G);
            if (row < B * K && lane == 0) gw[row] = from_acc<T>(sw);
        }
    }
}
#define WIN_BWD_PARAMS(T)                                                                                       \
    (const T* grad, const T* v, const T* w, const T* gate, const typename Acc<T>::type* stats, T* gv, T* gw, \
     int64_t B, int K, int k, int G)
INSTANTIATE(win_bwd, WIN_BWD_PARAMS, (grad, v, w, gate, stats, gv, gw, B, K, k, G))
