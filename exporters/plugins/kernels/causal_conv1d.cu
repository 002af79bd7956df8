// Depthwise causal conv1d (prefill) and its one-step update (decode). Memory-bound.
//
// Prefill, common case (width 2..4, y in x's dtype): one thread per EP_CONV_VEC consecutive outputs of a
// [batch*dim, seqlen] row, read and written with 16-byte vectors where the rows are aligned; the width-1 inputs
// before its first output come from the previous lane by shuffle (the previous segment of the same row), from
// global memory at a warp's first lane, or from initial_state at the row's start. silu fused; the thread with
// a row's last segment writes final_state. Threads run along rows first, so a warp streams 32 * EP_CONV_VEC
// contiguous elements however short the rows are.
// Other widths and mixed x/y dtypes: the general kernel below stages a tile of the padded row in shared memory.
#include <algorithm>

#include "common.cuh"

#ifndef EP_CONV_VEC  // outputs per thread in the fast kernel (8 = one 16-byte vector of 16-bit values)
// 16 (two vectors): H100, mamba-2.8b's 5120 x 16384 bf16, 0.144 ms (= triton's) against 0.158 ms with 8
// (benchmarks/plugin_variants.py, 2026-11-23); the copy of x alone took 0.116 ms
#define EP_CONV_VEC 16
#endif
#ifndef EP_CONV_THREADS
#define EP_CONV_THREADS 256
#endif

namespace ep {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 8;  // outputs per thread: fewer, fuller blocks (one per 256 steps left 3x on the table)
constexpr int kTile = kThreads * kPerThread;
constexpr int kMaxWidth = 64;
constexpr int kVec = EP_CONV_VEC;
constexpr int kFastMaxWidth = 4;
static_assert(kVec >= kFastMaxWidth - 1 && (kVec & (kVec - 1)) == 0, "EP_CONV_VEC: a power of two >= 4");

// xpad = cat(initial_state or zeros, x) along time, for one (b, d) row; j indexes xpad.
__device__ __forceinline__ float xpad_at(const ep_conv_params& p, int64_t xrow, int64_t srow, int64_t j) {
    const int64_t k = p.width - 1;
    if (j < k) return ld_or(p.initial_state, srow + j, 0.f);
    return j - k < p.seqlen ? ld(p.x.data, p.x.dtype, xrow + j - k) : 0.f;
}

__device__ __forceinline__ float activate(float v, int act) { return act == EP_ACT_SILU ? silu(v) : v; }
// the fast kernel's: memory-bound only while its per-element math stays a few instructions
__device__ __forceinline__ float activate_fast(float v, int act) { return act == EP_ACT_SILU ? silu_fast(v) : v; }

template <typename E> __device__ __forceinline__ E from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Vector memory access of V elements of type E: the widest of 16, 8, 4 bytes that V * sizeof(E) fills.
template <int BYTES> struct VecWord;
template <> struct VecWord<16> { using type = uint4; };
template <> struct VecWord<8> { using type = uint2; };
template <> struct VecWord<4> { using type = unsigned; };

template <typename E, int V>
struct Vec {
    static constexpr int kBytes = V * static_cast<int>(sizeof(E)) >= 16 ? 16 : V * static_cast<int>(sizeof(E));
    static constexpr int kPer = kBytes / static_cast<int>(sizeof(E));  // elements per access
    using Word = typename VecWord<kBytes>::type;
    static_assert(V % kPer == 0, "vector width");

    __device__ __forceinline__ static void load(const E* src, float* out) {
#pragma unroll
        for (int c = 0; c < V / kPer; ++c) {
            union { Word w; E e[kPer]; } u;
            u.w = reinterpret_cast<const Word*>(src)[c];
#pragma unroll
            for (int k = 0; k < kPer; ++k) out[c * kPer + k] = to_f(u.e[k]);
        }
    }
    __device__ __forceinline__ static void store(E* dst, const float (&v)[V]) {
#pragma unroll
        for (int c = 0; c < V / kPer; ++c) {
            union { Word w; E e[kPer]; } u;
#pragma unroll
            for (int k = 0; k < kPer; ++k) u.e[k] = from_f<E>(v[c * kPer + k]);
            reinterpret_cast<Word*>(dst)[c] = u.w;
        }
    }
};

// grid: 1-d over (row, segment) pairs, segments of kVec steps, rows = batch * dim (fewer than 2^32 pairs: 32-bit
// division, a fraction of the 64-bit one's instructions). `vec`: rows are aligned for Vec<E, kVec> (seqlen %
// kVec == 0 and x, y aligned).
template <typename E, int W>
__global__ void __launch_bounds__(EP_CONV_THREADS) conv_fast_kernel(const ep_conv_params p, const unsigned segs,
                                                                   const bool vec) {
    constexpr int H = W - 1;  // halo
    const int64_t L = p.seqlen;
    const unsigned rows = static_cast<unsigned>(p.batch) * static_cast<unsigned>(p.dim);
    const unsigned s = blockIdx.x * EP_CONV_THREADS + threadIdx.x;
    const unsigned row32 = s / segs;
    const int64_t row = row32, j = s - row32 * segs, t0 = j * kVec;
    const bool valid = row32 < rows;
    const int n = valid ? static_cast<int>(min(static_cast<int64_t>(kVec), max(static_cast<int64_t>(0), L - t0))) : 0;
    const E* x = static_cast<const E*>(p.x.data) + row * L;

    float win[H + kVec];  // x[t0 - H .. t0 + kVec), zeros past the end
    float* xs = win + H;
    if (vec && n == kVec) {
        Vec<E, kVec>::load(x + t0, xs);
    } else {
#pragma unroll
        for (int k = 0; k < kVec; ++k) xs[k] = k < n ? to_f(x[t0 + k]) : 0.f;
    }
    // the halo is the previous lane's last H inputs when it holds the previous segment of this row
#pragma unroll
    for (int k = 0; k < H; ++k) win[k] = __shfl_up_sync(0xffffffffu, xs[kVec - H + k], 1);
    if (valid && (j == 0 || (threadIdx.x & 31) == 0)) {
#pragma unroll
        for (int k = 0; k < H; ++k) {
            const int64_t t = t0 - H + k;
            win[k] = t >= 0 ? to_f(x[t]) : ld_or(p.initial_state, row * H + H + t, 0.f);
        }
    }
    if (!valid) return;

    const int64_t d = row32 % static_cast<unsigned>(p.dim);
    float w[W];
#pragma unroll
    for (int k = 0; k < W; ++k) w[k] = ld(p.weight.data, p.weight.dtype, d * W + k);
    const float bias = ld_or(p.bias, d, 0.f);
    float out[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
        float acc = bias;
#pragma unroll
        for (int k = 0; k < W; ++k) acc = fmaf(w[k], win[i + k], acc);
        out[i] = activate_fast(acc, p.activation);
    }
    E* y = static_cast<E*>(p.y.data) + row * L;
    if (vec && n == kVec) {
        Vec<E, kVec>::store(y + t0, out);
    } else {
#pragma unroll
        for (int k = 0; k < kVec; ++k)
            if (k < n) y[t0 + k] = from_f<E>(out[k]);
    }
    if (j == segs - 1) {
        // one thread per row: re-reading H inputs beats indexing `win` by n (which would put it in local memory)
        for (int k = 0; k < H; ++k)
            st(p.final_state.data, p.final_state.dtype, row * H + k, xpad_at(p, row * L, row * H, L + k));
    }
}

// grid: (time tiles of kTile, dim, batch)
__global__ void __launch_bounds__(kThreads) conv_kernel(ep_conv_params p) {
    __shared__ float s_x[kTile + kMaxWidth - 1];
    __shared__ float s_w[kMaxWidth];
    const int W = p.width;
    const int64_t d = blockIdx.y, b = blockIdx.z;
    const int64_t xrow = (b * p.dim + d) * p.seqlen;
    const int64_t srow = (b * p.dim + d) * (W - 1);
    const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTile;
    for (int i = threadIdx.x; i < kTile + W - 1; i += kThreads) s_x[i] = xpad_at(p, xrow, srow, t0 + i);
    for (int k = threadIdx.x; k < W; k += kThreads) s_w[k] = ld(p.weight.data, p.weight.dtype, d * W + k);
    __syncthreads();
    const float bias = ld_or(p.bias, d, 0.f);
    for (int j = threadIdx.x; j < kTile && t0 + j < p.seqlen; j += kThreads) {
        float acc = bias;
        for (int k = 0; k < W; ++k) acc += s_w[k] * s_x[j + k];
        st(p.y.data, p.y.dtype, xrow + t0 + j, activate(acc, p.activation));
    }
    if (blockIdx.x == 0) {
        for (int k = threadIdx.x; k < W - 1; k += kThreads)
            st(p.final_state.data, p.final_state.dtype, srow + k, xpad_at(p, xrow, srow, p.seqlen + k));
    }
}

// one thread per (b, d) row
__global__ void __launch_bounds__(kThreads) conv_update_kernel(ep_conv_update_params p) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    if (row >= static_cast<int64_t>(p.batch) * p.dim) return;
    const int W = p.width;
    const int64_t d = row % p.dim;
    const int64_t srow = row * (W - 1);
    float acc = ld_or(p.bias, d, 0.f);
    for (int k = 0; k < W - 1; ++k) {
        const float s = ld(p.conv_state.data, p.conv_state.dtype, srow + k);
        acc += ld(p.weight.data, p.weight.dtype, d * W + k) * s;
        if (k > 0) st(p.new_conv_state.data, p.new_conv_state.dtype, srow + k - 1, s);
    }
    const float x = ld(p.x.data, p.x.dtype, row);
    acc += ld(p.weight.data, p.weight.dtype, d * W + W - 1) * x;
    if (W > 1) st(p.new_conv_state.data, p.new_conv_state.dtype, srow + W - 2, x);
    st(p.y.data, p.y.dtype, row, activate(acc, p.activation));
}

bool valid_act(int a) { return a == EP_ACT_NONE || a == EP_ACT_SILU; }

}  // namespace
}  // namespace ep

namespace ep {
namespace {
template <typename E, int W>
int launch_fast(const ep_conv_params& p, cudaStream_t stream) {
    const int64_t segs = std::max<int64_t>(1, ceil_div(p.seqlen, kVec));
    const int64_t blocks = ceil_div(static_cast<int64_t>(p.batch) * p.dim * segs, EP_CONV_THREADS);
    if (blocks * EP_CONV_THREADS > 0xffffffffLL) return EP_ERR_UNSUPPORTED;  // (x alone would be >= 8 GB)
    constexpr int align = Vec<E, kVec>::kBytes;
    const bool vec = p.seqlen % kVec == 0 && reinterpret_cast<uintptr_t>(p.x.data) % align == 0 &&
                     reinterpret_cast<uintptr_t>(p.y.data) % align == 0;
    conv_fast_kernel<E, W><<<static_cast<unsigned>(blocks), EP_CONV_THREADS, 0, stream>>>(
        p, static_cast<unsigned>(segs), vec);
    return launch_status();
}

template <typename E>
int launch_fast_width(const ep_conv_params& p, cudaStream_t stream) {
    if (p.width == 2) return launch_fast<E, 2>(p, stream);
    if (p.width == 3) return launch_fast<E, 3>(p, stream);
    return launch_fast<E, 4>(p, stream);
}
}  // namespace
}  // namespace ep

extern "C" int edgeports_causal_conv1d(const ep_conv_params* p, void* stream) {
    using namespace ep;
    if (!p || p->batch <= 0 || p->dim <= 0 || p->seqlen < 0 || p->width <= 0 || !valid_act(p->activation))
        return EP_ERR_ARGS;
    if (!valid_in(p->x, true) || !valid_in(p->weight, true) || !valid_in(p->bias, false) ||
        !valid_in(p->initial_state, false) || !valid_out(p->y) || (p->width > 1 && !valid_out(p->final_state)))
        return EP_ERR_ARGS;
    if (p->width > kMaxWidth || p->batch > 65535) return EP_ERR_UNSUPPORTED;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (p->width >= 2 && p->width <= kFastMaxWidth && p->x.dtype == p->y.dtype) {
        if (p->x.dtype == EP_F32) return launch_fast_width<float>(*p, s);
        if (p->x.dtype == EP_F16) return launch_fast_width<__half>(*p, s);
        return launch_fast_width<__nv_bfloat16>(*p, s);
    }
    if (p->dim > 65535) return EP_ERR_UNSUPPORTED;
    const int64_t tiles = ceil_div(p->seqlen, kTile);
    const dim3 grid(static_cast<unsigned>(tiles > 0 ? tiles : 1), p->dim, p->batch);
    conv_kernel<<<grid, kThreads, 0, s>>>(*p);
    return launch_status();
}

extern "C" int edgeports_causal_conv1d_update(const ep_conv_update_params* p, void* stream) {
    using namespace ep;
    if (!p || p->batch <= 0 || p->dim <= 0 || p->width <= 0 || !valid_act(p->activation)) return EP_ERR_ARGS;
    if (!valid_in(p->x, true) || !valid_in(p->weight, true) || !valid_in(p->bias, false) ||
        (p->width > 1 && (!valid_in(p->conv_state, true) || !valid_out(p->new_conv_state))) || !valid_out(p->y))
        return EP_ERR_ARGS;
    const int64_t rows = static_cast<int64_t>(p->batch) * p->dim;
    conv_update_kernel<<<static_cast<unsigned>(ceil_div(rows, kThreads)), kThreads, 0,
                         static_cast<cudaStream_t>(stream)>>>(*p);
    return launch_status();
}
