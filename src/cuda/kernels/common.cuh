// Shared device helpers of the gpmkit kernels (score.cu, loss.cu).
//
// Element types: T ∈ {float, double, __nv_bfloat16, __half}. Arithmetic runs in A = Acc<T>::type (float,
// or double for double inputs); losses are summed in double. Outputs and gradients are stored as T.
//
// Row kernels map one row (a pair, a response) to a group of G ∈ {1, 2, 4, 8, 16, 32} consecutive lanes
// of a warp; lane l of a group handles the 2-D blocks l, l + G, ... of the row, so a warp reads whole rows
// contiguously. Group sums use a fixed xor-shuffle butterfly, block sums a fixed shared-memory tree and
// the final loss reduction a second launch over the per-block partials in index order: no atomics, so
// every result is bitwise reproducible for a given shape (the grid depends on the shape only).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Every kernel is launched with this many threads per block (src/cuda/plan.rs: BLOCK).
#define GPM_BLOCK 256

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }

// Two consecutive elements (one 2-D block), loaded and stored as one vector; the launcher checks that
// every base pointer is aligned to 2·sizeof(T) and rows have an even width, so the casts are aligned.
template <typename A> struct P2 { A x, y; };

__device__ __forceinline__ P2<float> load2(const float* p) { float2 v = *reinterpret_cast<const float2*>(p); return {v.x, v.y}; }
__device__ __forceinline__ P2<double> load2(const double* p) { double2 v = *reinterpret_cast<const double2*>(p); return {v.x, v.y}; }
__device__ __forceinline__ P2<float> load2(const __nv_bfloat16* p) {
    float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    return {v.x, v.y};
}
__device__ __forceinline__ P2<float> load2(const __half* p) {
    float2 v = __half22float2(*reinterpret_cast<const __half2*>(p));
    return {v.x, v.y};
}

__device__ __forceinline__ void store2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }
__device__ __forceinline__ void store2(double* p, double x, double y) { *reinterpret_cast<double2*>(p) = make_double2(x, y); }
__device__ __forceinline__ void store2(__nv_bfloat16* p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}
__device__ __forceinline__ void store2(__half* p, float x, float y) { *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y); }

// Sum over the G lanes of a group (every lane gets the same bits). All 32 lanes of the warp must call it.
template <typename A> __device__ __forceinline__ A group_sum(A v, int G) {
    for (int o = G >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (GPM_BLOCK threads) in a fixed tree; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v) {
    __shared__ double sh[GPM_BLOCK];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = GPM_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

// softplus(−z) = −log σ(z) and σ(z), stable for any z.
__device__ __forceinline__ float softplus_neg(float z, float* sig) {
    float e = expf(-fabsf(z));
    float r = 1.0f / (1.0f + e);
    *sig = z >= 0.0f ? r : e * r;
    return fmaxf(-z, 0.0f) + log1pf(e);
}
__device__ __forceinline__ double softplus_neg(double z, double* sig) {
    double e = exp(-fabs(z));
    double r = 1.0 / (1.0 + e);
    *sig = z >= 0.0 ? r : e * r;
    return fmax(-z, 0.0) + log1p(e);
}

// Grid-stride iteration over `rows` rows with G lanes per row, uniform across the warp (the shuffles
// need every lane): `row` may be ≥ rows on the last round; such lanes compute nothing and store nothing.
#define FOR_ROWS(rows, G)                                                                  \
    const int lane = threadIdx.x & ((G) - 1);                                              \
    const int64_t first_row = ((int64_t)blockIdx.x * GPM_BLOCK + threadIdx.x) / (G);       \
    const int64_t row_step = (int64_t)gridDim.x * GPM_BLOCK / (G);                         \
    const int64_t rounds = ((rows) + row_step - 1) / row_step;                             \
    for (int64_t round = 0, row = first_row; round < rounds; ++round, row += row_step)

// Rows per round of the pair-row kernels (score_fwd, gpm_fwd, gpm_bwd): one thread loads its share of
// GPM_UNROLL rows, spaced row_step apart, before it reduces or stores any of them, so it keeps several
// independent loads in flight (streaming from HBM needs tens of KB in flight per SM).
#define GPM_UNROLL 4

#define FOR_ROW_BATCHES(rows, G)                                                           \
    const int lane = threadIdx.x & ((G) - 1);                                              \
    const int64_t first_row = ((int64_t)blockIdx.x * GPM_BLOCK + threadIdx.x) / (G);       \
    const int64_t row_step = (int64_t)gridDim.x * GPM_BLOCK / (G);                         \
    const int64_t batch_step = row_step * GPM_UNROLL;                                      \
    const int64_t rounds = ((rows) + batch_step - 1) / batch_step;                         \
    for (int64_t round = 0, row0 = first_row; round < rounds; ++round, row0 += batch_step)

// For k ≤ 32 (G ≥ k, so lane l < k owns exactly block l of the row): loads the lane's block of x and y
// and its gate for GPM_UNROLL rows into registers (zeros / λ = 1 outside the data).
template <typename T>
__device__ __forceinline__ void load_lane_blocks(const T* __restrict__ x, const T* __restrict__ y,
                                                 const T* __restrict__ gate, int64_t n, int k, int lane,
                                                 int64_t row0, int64_t row_step, P2<typename Acc<T>::type> (&a)[GPM_UNROLL],
                                                 P2<typename Acc<T>::type> (&b)[GPM_UNROLL],
                                                 typename Acc<T>::type (&lam)[GPM_UNROLL]) {
    typedef typename Acc<T>::type A;
#pragma unroll
    for (int u = 0; u < GPM_UNROLL; ++u) {
        const int64_t row = row0 + u * row_step;
        const bool ok = row < n && lane < k;
        const int64_t o = (row * k + lane) * 2;
        a[u] = ok ? load2(x + o) : P2<A>{A(0), A(0)};
        b[u] = ok ? load2(y + o) : P2<A>{A(0), A(0)};
        lam[u] = (ok && gate) ? to_acc(gate[row * k + lane]) : A(1);
    }
}

// This lane's part of s(x_row ≻ y_row) for GPM_UNROLL rows (any k); sum over the group afterwards.
template <typename T>
__device__ __forceinline__ void lane_scores(const T* __restrict__ x, const T* __restrict__ y,
                                            const T* __restrict__ gate, int64_t n, int k, int G, int lane,
                                            int64_t row0, int64_t row_step, typename Acc<T>::type (&s)[GPM_UNROLL]) {
    typedef typename Acc<T>::type A;
    if (k <= 32) {
        P2<A> a[GPM_UNROLL], b[GPM_UNROLL];
        A lam[GPM_UNROLL];
        load_lane_blocks(x, y, gate, n, k, lane, row0, row_step, a, b, lam);
#pragma unroll
        for (int u = 0; u < GPM_UNROLL; ++u) s[u] = lam[u] * (a[u].x * b[u].y - a[u].y * b[u].x);
    } else {
#pragma unroll
        for (int u = 0; u < GPM_UNROLL; ++u) {
            const int64_t row = row0 + u * row_step;
            A acc = 0;
            if (row < n) {
                for (int l = lane; l < k; l += G) {
                    P2<A> a = load2(x + (row * k + l) * 2), b = load2(y + (row * k + l) * 2);
                    const A t = a.x * b.y - a.y * b.x;
                    acc += gate ? t * to_acc(gate[row * k + l]) : t;
                }
            }
            s[u] = acc;
        }
    }
}

// Plain grid-stride loop over `count` independent items.
#define FOR_ITEMS(i, count) \
    for (int64_t i = (int64_t)blockIdx.x * GPM_BLOCK + threadIdx.x; i < (count); i += (int64_t)gridDim.x * GPM_BLOCK)

// extern "C" entry points for every element type: NAME_f32, NAME_f64, NAME_bf16, NAME_f16.
#define INSTANTIATE(NAME, PARAMS, ARGS)                                                                    \
    extern "C" __global__ void __launch_bounds__(GPM_BLOCK) NAME##_f32 PARAMS(float) { NAME<float> ARGS; } \
    extern "C" __global__ void __launch_bounds__(GPM_BLOCK) NAME##_f64 PARAMS(double) { NAME<double> ARGS; } \
    extern "C" __global__ void __launch_bounds__(GPM_BLOCK) NAME##_bf16 PARAMS(__nv_bfloat16) { NAME<__nv_bfloat16> ARGS; } \
    extern "C" __global__ void __launch_bounds__(GPM_BLOCK) NAME##_f16 PARAMS(__half) { NAME<__half> ARGS; }
