// Depthwise causal conv1d (prefill) and its one-step update (decode). Memory-bound: prefill stages
// a tile of the padded input row in shared memory so each input is read from global memory once.
#include "common.cuh"

namespace ep {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 8;  // outputs per thread: fewer, fuller blocks (one per 256 steps left 3x on the table)
constexpr int kTile = kThreads * kPerThread;
constexpr int kMaxWidth = 64;

// xpad = cat(initial_state or zeros, x) along time, for one (b, d) row; j indexes xpad.
__device__ __forceinline__ float xpad_at(const ep_conv_params& p, int64_t xrow, int64_t srow, int64_t j) {
    const int64_t k = p.width - 1;
    if (j < k) return ld_or(p.initial_state, srow + j, 0.f);
    return j - k < p.seqlen ? ld(p.x.data, p.x.dtype, xrow + j - k) : 0.f;
}

__device__ __forceinline__ float activate(float v, int act) { return act == EP_ACT_SILU ? silu(v) : v; }

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

extern "C" int edgeports_causal_conv1d(const ep_conv_params* p, void* stream) {
    using namespace ep;
    if (!p || p->batch <= 0 || p->dim <= 0 || p->seqlen < 0 || p->width <= 0 || !valid_act(p->activation))
        return EP_ERR_ARGS;
    if (!valid_in(p->x, true) || !valid_in(p->weight, true) || !valid_in(p->bias, false) ||
        !valid_in(p->initial_state, false) || !valid_out(p->y) || (p->width > 1 && !valid_out(p->final_state)))
        return EP_ERR_ARGS;
    if (p->width > kMaxWidth || p->dim > 65535 || p->batch > 65535) return EP_ERR_UNSUPPORTED;
    const int64_t tiles = ceil_div(p->seqlen, kTile);
    const dim3 grid(static_cast<unsigned>(tiles > 0 ? tiles : 1), p->dim, p->batch);
    conv_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(*p);
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
