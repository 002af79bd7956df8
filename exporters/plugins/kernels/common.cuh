// Shared device helpers and host-side planning for the edgeports SSM kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "edgeports_ssm.h"

namespace ep {

// Loads and stores convert at the memory boundary: every kernel computes in float32, and a
// dtype switch that is uniform across the warp costs far less than a template instance per
// combination of input dtypes (which the plugins would otherwise have to enumerate).
__device__ __forceinline__ float ld(const void* p, int dt, int64_t i) {
    if (dt == EP_F32) return static_cast<const float*>(p)[i];
    if (dt == EP_F16) return __half2float(static_cast<const __half*>(p)[i]);
    return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

__device__ __forceinline__ float ld_or(const ep_in& t, int64_t i, float dflt) {
    return t.data ? ld(t.data, t.dtype, i) : dflt;
}

__device__ __forceinline__ void st(void* p, int dt, int64_t i, float v) {
    if (dt == EP_F32) static_cast<float*>(p)[i] = v;
    else if (dt == EP_F16) static_cast<__half*>(p)[i] = __float2half_rn(v);
    else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// Calls f(ptr) with the pointer cast to the dtype's element type, so loops inside f see one fixed type.
template <typename F>
__device__ __forceinline__ void with_type(const void* p, int dt, F&& f) {
    if (dt == EP_F32) f(static_cast<const float*>(p));
    else if (dt == EP_F16) f(static_cast<const __half*>(p));
    else f(static_cast<const __nv_bfloat16*>(p));
}

// Cooperative tile load: tile element i in [0, n) is t[gidx(i)] as float (0 where gidx(i) < 0), handed to
// store(i, v). Each thread issues its loads 8 at a time before storing any, so their latencies overlap;
// a plain load-then-store loop would wait out every load in turn.
template <typename Index, typename Store>
__device__ __forceinline__ void load_tile(const ep_in& t, int n, Index gidx, Store store) {
    const int tid = threadIdx.x, nt = blockDim.x;
    with_type(t.data, t.dtype, [&](auto src) {
        for (int base = tid; base < n; base += 8 * nt) {
            float v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int i = base + k * nt;
                const int64_t g = i < n ? gidx(i) : -1;
                v[k] = g >= 0 ? to_f(src[g]) : 0.f;
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int i = base + k * nt;
                if (i < n) store(i, v[k]);
            }
        }
    });
}

// torch.nn.functional.softplus with beta=1, threshold=20.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// Sum over aligned groups of `width` lanes (a power of two <= 32). Every lane of the warp must call it.
__device__ __forceinline__ float group_sum(float v, int width) {
    for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

constexpr float kLog2e = 1.4426950408889634f;

// ---- host side ----

inline bool valid_dtype(int dt) { return dt == EP_F32 || dt == EP_F16 || dt == EP_BF16; }
inline bool valid_in(const ep_in& t, bool required) {
    return t.data ? valid_dtype(t.dtype) : !required;
}
inline bool valid_out(const ep_out& t) { return t.data && valid_dtype(t.dtype); }

inline int next_pow2(int v) {
    int p = 1;
    while (p < v) p <<= 1;
    return p;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Of the current device, cached per device (0 if unknown): multiprocessor count, compute capability major,
// and the most dynamic shared memory a block may opt in to.
int sm_count();
int compute_major();
int max_smem_optin();

// How the sequence of a scan is split for parallelism. With one chunk the scan is a single pass;
// with nc > 1: pass 1 scans chunks 0..nc-2 (chunk 0 from the initial state, the others from zero)
// and records their end states and dt sums, combine() turns those into the true state entering
// each chunk, and pass 2 rescans every chunk from its true entering state, writing y.
struct ChunkPlan {
    int nchunks;
    int chunk_len;      // a multiple of `tile`
    int nchunks_bound;  // >= nchunks; what the workspace is sized for
};

// base_blocks: blocks of one pass without chunking; warps_per_block: their size.
ChunkPlan plan_chunks(int64_t base_blocks, int warps_per_block, int64_t seqlen, int tile);

// The SSD scan's chunked tensor-core form (ssd_chunked.cu): whether it serves these params (16-bit x/B/C,
// headdim 32/64/128, dstate % 16 == 0 and <= 256, sm_80+), its workspace, and the launch.
bool ssd_chunked_applies(const ep_ssd_params& p);
size_t ssd_chunked_workspace(const ep_ssd_params& p);
int ssd_chunked(const ep_ssd_params& p, void* workspace, cudaStream_t stream);

// Workspace of a plan: chunk states [nc-1, rows, per_row] and dt sums [nc-1, rows] (float32).
size_t chunk_workspace_bytes(const ChunkPlan& plan, int64_t rows, int64_t per_row);

// The plan and its workspace, as the scan kernels take them (by value).
struct ChunkWork {
    float* hs;  // [nc-1, rows, per_row] chunk-end states
    float* S;   // [nc-1, rows] dt sums
    int nchunks, chunk_len;
};
ChunkWork chunk_work(const ChunkPlan& plan, int64_t rows, int64_t per_row, void* workspace);

// hs: [nc-1, batch, R, E] chunk-end states, S: [nc-1, batch, R] dt sums per chunk. In place,
// hs[c] becomes the true state at the end of chunk c. The decay of element (r, e) over chunk c is
// exp(A[r * a_rs + e * a_es] * S[c, b, r]).
int combine_chunks(float* hs, const float* S, ep_in A, int64_t a_rs, int64_t a_es, int nchunks, int64_t batch,
                   int64_t R, int64_t E, cudaStream_t stream);

inline int launch_status() {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? EP_OK : static_cast<int>(e);
}

}  // namespace ep

namespace ep {
// MUFU-approximate forms (absolute error ~1e-7) for the prefill kernels' per-element work, where the accurate
// expf / log1pf / IEEE division would cost more issue slots than the memory traffic or the scan they feed.
__device__ __forceinline__ float softplus_fast(float x) { return x > 20.f ? x : __logf(1.f + __expf(x)); }
__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.f + __expf(-x)); }
}  // namespace ep
