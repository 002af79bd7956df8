// Mamba2 SSD scan (prefill) in its chunked matrix form on tensor cores, for float16 / bfloat16 x, B, C.
//
// The sequence is cut into chunks of Q steps. Within a chunk the scan is two matrix products; across
// chunks only the [headdim, dstate] states pass along (the SSD paper's block decomposition):
//   1. states:  S_c = sum_t exp(s_end - s_t) dt_t x_t (x) B_t      [P, N] per (chunk, head), tensor cores
//   2. pass:    H_c = state entering chunk c: H_0 = initial, H_{c+1} = exp(s_end_c) H_c + S_c   (elementwise)
//   3. output:  y_t = exp(s_t) C_t H_c  +  sum_{j<=t} (C_t . B_j) exp(s_t - s_j) dt_j x_j  +  D x_t
//               (then y *= silu(z)), both terms on tensor cores; C_t . B_j comes from
//   0. CB:      C B^T [Q, Q] per (chunk, group), computed once for all the group's heads
// with dt after bias / softplus / clamp and s_t the inclusive cumulative sum of dt * A within the chunk.
// Decays, dt and accumulation stay in float32; the operands of the products are the inputs' 16-bit type
// (x scaled by its decay weight, the states H_c and the masked decay matrix are rounded to it, as mamba_ssm's
// Triton kernels do), so y and the final state carry the inputs' precision, not float32's.
// Requirements: sm_80+, x/B/C of one 16-bit dtype, headdim in {32, 64, 128}, dstate a multiple of 16 up to
// 256; otherwise ssd_chunk_scan.cu runs the recurrence.
//
// Blocking (pass 3): a block computes BM rows of one chunk's y for one head; all its warps first build the
// masked decay matrix M = CB * exp(s_t - s_j) * dt_j [BM, steps up to the block's last row] once in shared
// memory (the per-warp tiles of the first version computed it per 16x16 tile with a global load per element),
// then each warp owns 16 rows x WCOLS*16 columns and runs both products from shared memory (C, the entering
// state H_c and x arrive by cp.async, the state while C.H is on the tensor cores). The C.H term and the
// intra-chunk term accumulate in separate fragments and meet in one epilogue (no mid-way round trip).
// The tuning constants are compile-time and overridable with -D (benchmarks/ssd_variants.py builds variants):
#ifndef EP_SSD_Q  // chunk length: 64, 128 or 256 (64 is also the fallback where shared memory is short)
#define EP_SSD_Q 128
#endif
#ifndef EP_SSD_BM  // rows of y per block of pass 3: a power of two >= 16 (capped at the chunk length)
// 128: H100, mamba2-2.7b at 16k, 1.46 ms bf16 / 1.32 ms fp16 against 1.57 / 1.44 with 64
// (benchmarks/ssd_variants.py, 2026-11-23; triton 0.78 ms)
#define EP_SSD_BM 128
#endif
#ifndef EP_SSD_WCOLS  // 16-column tiles of y per warp in pass 3 (warps per block: BM/16 * headdim/16/WCOLS)
#define EP_SSD_WCOLS 2
#endif
#ifndef EP_SSD_STATE_WARPS  // warps per block of pass 1
#define EP_SSD_STATE_WARPS 8
#endif
#ifndef EP_SSD_PASS_VEC  // state elements per thread of pass 2: 1, 2 or 4
#define EP_SSD_PASS_VEC 4
#endif
#include <cuda_pipeline.h>
#include <mma.h>

#include <algorithm>

#include "common.cuh"

namespace ep {
namespace {

using namespace nvcuda;

// bf16 tensor-core fragments need sm_80; older targets compile empty kernels that layout_of never launches
// (it checks the device's compute capability).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define EP_TENSOR_CORES 1
#else
#define EP_TENSOR_CORES 0
#endif

// Shared-memory rows are padded by 8 elements (16 bytes): rows of 64 or 128 16-bit values would otherwise start
// on the same banks, and every 16x16 tensor-core tile load would serialise on them.
constexpr int kPad = 8;

static_assert(EP_SSD_Q == 64 || EP_SSD_Q == 128 || EP_SSD_Q == 256, "EP_SSD_Q: 64, 128 or 256");
static_assert(EP_SSD_BM >= 16 && (EP_SSD_BM & (EP_SSD_BM - 1)) == 0, "EP_SSD_BM: a power of two >= 16");
static_assert(EP_SSD_WCOLS == 1 || EP_SSD_WCOLS == 2 || EP_SSD_WCOLS == 4 || EP_SSD_WCOLS == 8,
              "EP_SSD_WCOLS: 1, 2, 4 or 8");
static_assert(EP_SSD_STATE_WARPS >= 1 && EP_SSD_STATE_WARPS <= 32, "EP_SSD_STATE_WARPS: 1..32");
static_assert(EP_SSD_PASS_VEC == 1 || EP_SSD_PASS_VEC == 2 || EP_SSD_PASS_VEC == 4, "EP_SSD_PASS_VEC: 1, 2 or 4");

// Pass 3's block shape for chunk length Q, BM rows and headdim PT * 16.
template <int Q, int PT>
struct OutShape {
    static constexpr int BM = EP_SSD_BM < Q ? EP_SSD_BM : Q;
    static constexpr int WC = EP_SSD_WCOLS < PT ? EP_SSD_WCOLS : PT;  // column tiles per warp
    static constexpr int CG = PT / WC;                                // warps across the columns
    static constexpr int RT = BM / 16;                                // warps down the rows
    static constexpr int WARPS = RT * CG;
    static constexpr int MT = Q / BM;  // row tiles per chunk
    static_assert(WARPS <= 32, "EP_SSD_BM / EP_SSD_WCOLS: more than 32 warps per block");
};

// Bytes of pass 3's C / H_c region, which the epilogue reuses for its per-warp fragment staging (2 x 16x16 float).
__host__ __device__ __forceinline__ int out_stage_bytes(int BM, int P, int N, int warps) {
    const int rows = (BM + P) * (N + kPad) * 2, staging = warps * 2 * 256 * 4;
    return rows > staging ? rows : staging;
}

template <typename T>
__device__ __forceinline__ T to_t(float v);
template <>
__device__ __forceinline__ __half to_t<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_t<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct ChunkIdx {
    int c, h, g, valid;
    int64_t b, t0;
};

__device__ __forceinline__ ChunkIdx chunk_idx(const ep_ssd_params& p, int Q) {
    ChunkIdx k;
    k.c = blockIdx.x;
    k.h = blockIdx.y;
    k.b = blockIdx.z;
    k.g = k.h / (p.nheads / p.ngroups);
    k.t0 = static_cast<int64_t>(k.c) * Q;
    k.valid = static_cast<int>(min(static_cast<int64_t>(Q), p.seqlen - k.t0));
    return k;
}

// s_dt[i] = dt after bias / softplus / clamp (0 past the sequence), s_cum[i] = sum_{j<=i} s_dt[j] * A[h].
template <int Q>
__device__ void chunk_decay(const ep_ssd_params& p, const ChunkIdx& k, float* s_dt, float* s_cum) {
    const float A = ld(p.A.data, p.A.dtype, k.h);
    const float bias = ld_or(p.dt_bias, k.h, 0.f);
    for (int i = threadIdx.x; i < Q; i += blockDim.x) {
        float dt = 0.f;
        if (i < k.valid) {
            dt = ld(p.dt.data, p.dt.dtype, (k.b * p.seqlen + k.t0 + i) * p.nheads + k.h) + bias;
            if (p.dt_softplus) dt = softplus(dt);
            dt = fminf(fmaxf(dt, p.dt_min), p.dt_max);
        }
        s_dt[i] = dt;
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // one warp: Q/32 consecutive values per lane, then a scan of the lane totals
        constexpr int V = Q / 32;
        const int lane = threadIdx.x;
        float v[V], run = 0.f;
#pragma unroll
        for (int i = 0; i < V; ++i) v[i] = (run += s_dt[lane * V + i] * A);
        float total = run;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const float n = __shfl_up_sync(0xffffffffu, total, off);
            if (lane >= off) total += n;
        }
#pragma unroll
        for (int i = 0; i < V; ++i) s_cum[lane * V + i] = v[i] + (total - run);
    }
    __syncthreads();
}

// Rows [0, Q) x width of a [seq, ..., width]-strided 16-bit tensor into shared memory rows of `ld` elements
// (0 past the sequence),
// as asynchronous 16-byte copies (cp.async) that overlap the caller's work until wait_rows(): width, row0 and
// row_stride are multiples of 8 and the data 16-byte aligned (layout_of).
template <typename T>
__device__ void load_rows(const void* src, T* dst, int ld, int Q, int width, int valid, int64_t row0,
                          int64_t row_stride) {
    const int vecs = width / 8;
    const T* base = static_cast<const T*>(src) + row0;
    for (int i = threadIdx.x; i < Q * vecs; i += blockDim.x) {
        const int t = i / vecs, v = i - t * vecs;
        T* to = dst + t * ld + v * 8;
        if (t < valid) __pipeline_memcpy_async(to, base + t * row_stride + v * 8, 16);
        else *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
    }
}

// Waits for this thread's load_rows copies; a __syncthreads() must follow before other threads' rows are read.
__device__ __forceinline__ void wait_rows() {
    __pipeline_commit();
    __pipeline_wait_prior(0);
}

// Pass 0: CB_c = C B^T [Q, Q] (lower-triangular tiles) per (chunk, group), float32: every head of the group
// reads it in pass 3 instead of multiplying C by B again.
template <typename T, int Q>
__global__ void __launch_bounds__(Q * 2) ssd_cb_kernel(ep_ssd_params p, float* CB, int nchunks) {
#if EP_TENSOR_CORES
    extern __shared__ __align__(128) unsigned char smem[];
    const int N = p.dstate, ldb = N + kPad, c = blockIdx.x, g = blockIdx.y;
    const int64_t b = blockIdx.z, t0 = static_cast<int64_t>(c) * Q;
    const int valid = static_cast<int>(min(static_cast<int64_t>(Q), p.seqlen - t0));
    T* s_C = reinterpret_cast<T*>(smem);  // [Q, N (+pad)]
    T* s_B = s_C + Q * ldb;
    const int64_t row0 = ((b * p.seqlen + t0) * p.ngroups + g) * N, stride = static_cast<int64_t>(p.ngroups) * N;
    load_rows(p.C.data, s_C, ldb, Q, N, valid, row0, stride);
    load_rows(p.B.data, s_B, ldb, Q, N, valid, row0, stride);
    wait_rows();
    __syncthreads();
    constexpr int nt = Q / 16;
    float* out = CB + ((b * nchunks + c) * p.ngroups + g) * static_cast<int64_t>(Q) * Q;
    for (int tile = threadIdx.x / 32; tile < nt * nt; tile += blockDim.x / 32) {
        const int it = tile / nt, jt = tile % nt;
        if (jt > it) continue;  // above the diagonal: masked out in pass 3
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
        for (int n = 0; n < N; n += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;  // (t, n) = s_C[t * ldb + n]
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bm;  // (n, j) = s_B[j * ldb + n]
            wmma::load_matrix_sync(a, s_C + it * 16 * ldb + n, ldb);
            wmma::load_matrix_sync(bm, s_B + jt * 16 * ldb + n, ldb);
            wmma::mma_sync(acc, a, bm, acc);
        }
        wmma::store_matrix_sync(out + it * 16 * Q + jt * 16, acc, Q, wmma::mem_row_major);
    }
#endif
}

// V floats / V 16-bit values moved as one vector access.
template <int V>
struct alignas(4 * V) F32s {
    float v[V];
};
template <typename T, int V>
struct alignas(2 * V) Packed {
    T v[V];
};

// Pass 1: S_c = (x * w)^T B per (chunk, head), w_t = exp(s_end - s_t) dt_t; and the chunk's decay exp(s_end).
template <typename T, int Q>
__global__ void __launch_bounds__(EP_SSD_STATE_WARPS * 32) ssd_states_kernel(ep_ssd_params p, float* S, float* decay,
                                                                             int nchunks) {
#if EP_TENSOR_CORES
    extern __shared__ __align__(128) unsigned char smem[];
    const int P = p.headdim, N = p.dstate, H = p.nheads;
    const ChunkIdx k = chunk_idx(p, Q);
    float* s_dt = reinterpret_cast<float*>(smem);
    float* s_cum = s_dt + Q;
    const int ldx = P + kPad, ldb = N + kPad;
    T* s_x = reinterpret_cast<T*>(s_cum + Q);  // [Q, P (+pad)], scaled by w
    T* s_B = s_x + Q * ldx;                    // [Q, N (+pad)]
    load_rows(p.x.data, s_x, ldx, Q, P, k.valid, ((k.b * p.seqlen + k.t0) * H + k.h) * P, static_cast<int64_t>(H) * P);
    load_rows(p.B.data, s_B, ldb, Q, N, k.valid, ((k.b * p.seqlen + k.t0) * p.ngroups + k.g) * N,
              static_cast<int64_t>(p.ngroups) * N);
    chunk_decay<Q>(p, k, s_dt, s_cum);  // while the rows arrive
    const float end = s_cum[Q - 1];
    for (int t = threadIdx.x; t < Q; t += blockDim.x) s_dt[t] *= expf(end - s_cum[t]);  // now w_t
    wait_rows();
    __syncthreads();
    const int vecs = P / 8;  // 16-byte groups per row
    for (int i = threadIdx.x; i < Q * vecs; i += blockDim.x) {
        const int t = i / vecs;
        Packed<T, 8>* at = reinterpret_cast<Packed<T, 8>*>(s_x + t * ldx + (i - t * vecs) * 8);
        Packed<T, 8> v = *at;
        const float w = s_dt[t];
#pragma unroll
        for (int u = 0; u < 8; ++u) v.v[u] = to_t<T>(static_cast<float>(v.v[u]) * w);
        *at = v;
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    const int ntiles = (P / 16) * (N / 16);
    float* out = S + ((k.b * nchunks + k.c) * H + k.h) * static_cast<int64_t>(P) * N;
    for (int tile = warp; tile < ntiles; tile += nwarps) {
        const int pt = tile / (N / 16), nt = tile % (N / 16);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll 4
        for (int t = 0; t < Q; t += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> a;  // (p, t) = s_x[t * ldx + p]
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;  // (t, n) = s_B[t * ldb + n]
            wmma::load_matrix_sync(a, s_x + t * ldx + pt * 16, ldx);
            wmma::load_matrix_sync(b, s_B + t * ldb + nt * 16, ldb);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(out + pt * 16 * N + nt * 16, acc, N, wmma::mem_row_major);
    }
    if (threadIdx.x == 0) decay[(k.b * nchunks + k.c) * H + k.h] = expf(end);
#endif
}

// Pass 2: Ht[c] = the state entering chunk c, in T (pass 3's operand); the state after the last chunk is
// final_state (float32). V consecutive elements per thread (vector loads); chunk c+1's inputs are loaded while
// chunk c is applied, since the chain over chunks would otherwise wait out a memory latency per chunk.
template <typename T, int V>
__global__ void ssd_pass_kernel(ep_ssd_params p, const float* S, const float* decay, T* Ht, int nchunks) {
    const int64_t PN = static_cast<int64_t>(p.headdim) * p.dstate;  // a multiple of 16, so of V
    const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
    if (i0 >= p.batch * p.nheads * PN) return;
    const int64_t e = i0 % PN, bh = i0 / PN, h = bh % p.nheads, b = bh / p.nheads;
    float run[V];
#pragma unroll
    for (int v = 0; v < V; ++v) run[v] = ld_or(p.initial_state, i0 + v, 0.f);  // [batch, nheads, headdim, dstate]
    const int64_t stride = static_cast<int64_t>(p.nheads) * PN;  // one chunk of S / Ht
    const int64_t j0 = (b * nchunks * p.nheads + h) * PN + e;     // chunk 0
    const float* dec = decay + b * nchunks * p.nheads + h;        // chunk c at c * nheads
    F32s<V> s_next = *reinterpret_cast<const F32s<V>*>(S + j0);
    float d_next = dec[0];
    for (int c = 0; c < nchunks; ++c) {
        const int64_t j = j0 + c * stride;
        const F32s<V> s_cur = s_next;
        const float d = d_next;
        if (c + 1 < nchunks) {
            s_next = *reinterpret_cast<const F32s<V>*>(S + j + stride);
            d_next = dec[static_cast<int64_t>(c + 1) * p.nheads];
        }
        Packed<T, V> out;
#pragma unroll
        for (int v = 0; v < V; ++v) out.v[v] = to_t<T>(run[v]);
        *reinterpret_cast<Packed<T, V>*>(Ht + j) = out;
#pragma unroll
        for (int v = 0; v < V; ++v) run[v] = d * run[v] + s_cur.v[v];
    }
#pragma unroll
    for (int v = 0; v < V; ++v) st(p.final_state.data, p.final_state.dtype, i0 + v, run[v]);
}

// Pass 3: y for BM rows of one (chunk, head). Warp w owns rows [16 rt, 16 rt + 16) of the block's rows and
// columns [16 WC cg, 16 WC (cg + 1)) of headdim (rt = w / CG, cg = w % CG). Launch order: heads fastest, so the
// blocks reading one chunk's CB run together (from L2); within a chunk the row tiles with more of the causal
// triangle first. PT = headdim / 16.
template <typename T, int Q, int PT>
__global__ void __launch_bounds__(OutShape<Q, PT>::WARPS * 32)
    ssd_output_kernel(ep_ssd_params p, const T* Ht, const float* CB, int nchunks) {
#if EP_TENSOR_CORES
    using Sh = OutShape<Q, PT>;
    constexpr int BM = Sh::BM, WC = Sh::WC, P = PT * 16, ldx = P + kPad, ldm = Q + kPad;
    extern __shared__ __align__(128) unsigned char smem[];
    const int N = p.dstate, H = p.nheads, ldc = N + kPad;
    ChunkIdx k;
    k.h = static_cast<int>(blockIdx.x % static_cast<unsigned>(H));
    const int rest = static_cast<int>(blockIdx.x / static_cast<unsigned>(H));
    const int m = Sh::MT - 1 - rest % Sh::MT;  // row tile of the chunk
    k.c = rest / Sh::MT;
    k.b = blockIdx.y;
    k.g = k.h / (H / p.ngroups);
    k.t0 = static_cast<int64_t>(k.c) * Q;
    k.valid = static_cast<int>(min(static_cast<int64_t>(Q), p.seqlen - k.t0));
    const int r0 = m * BM;  // first row (step within the chunk) of this block
    if (r0 >= k.valid) return;  // block-uniform, before any barrier

    float* s_dt = reinterpret_cast<float*>(smem);  // [Q] dt
    float* s_cum = s_dt + Q;                        // [Q] cumulative dt * A
    float* s_e = s_cum + Q;                         // [BM] exp(s_t) of the block's rows
    T* s_C = reinterpret_cast<T*>(s_e + BM);        // [BM, N (+pad)]
    T* s_H = s_C + BM * ldc;                        // [P, N (+pad)]: H_c[p, n]
    float* stage = reinterpret_cast<float*>(s_C);  // epilogue, once C and H_c are consumed
    T* s_x = reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(s_C) + out_stage_bytes(BM, P, N, Sh::WARPS));
    T* s_M = s_x + Q * ldx;                         // [BM, Q (+pad)]: masked decay matrix (rows r0.., steps 0..)
    const int kx = r0 + BM;                         // the rows reach source steps [0, kx) (causal)

    const int64_t gstride = static_cast<int64_t>(p.ngroups) * N;
    load_rows(p.C.data, s_C, ldc, BM, N, min(BM, k.valid - r0), ((k.b * p.seqlen + k.t0 + r0) * p.ngroups + k.g) * N,
              gstride);
    load_rows(Ht + ((k.b * nchunks + k.c) * H + k.h) * static_cast<int64_t>(P) * N, s_H, ldc, P, N, P, 0, N);
    __pipeline_commit();
    load_rows(p.x.data, s_x, ldx, kx, P, k.valid, ((k.b * p.seqlen + k.t0) * H + k.h) * P, static_cast<int64_t>(H) * P);
    __pipeline_commit();
    chunk_decay<Q>(p, k, s_dt, s_cum);  // while the rows arrive
    for (int r = threadIdx.x; r < BM; r += blockDim.x) s_e[r] = expf(s_cum[r0 + r]);
    // M[r, j] = CB[t, j] exp(s_t - s_j) dt_j for j <= t = r0 + r, else 0; 4 steps per thread (one float4 of CB).
    // CB above the diagonal is never written (pass 0 skips those tiles): it is loaded alongside but not used.
    const float* G = CB + ((k.b * nchunks + k.c) * p.ngroups + k.g) * static_cast<int64_t>(Q) * Q;  // [Q, Q]
    const int quads = kx / 4;
#pragma unroll 4
    for (int i = threadIdx.x; i < BM * quads; i += blockDim.x) {
        const int r = i / quads, j = (i - r * quads) * 4, t = r0 + r;
        Packed<T, 4> out;
        if (j <= t) {
            const float4 g = *reinterpret_cast<const float4*>(G + t * Q + j);
            const float gv[4] = {g.x, g.y, g.z, g.w}, st_ = s_cum[t];
#pragma unroll
            for (int u = 0; u < 4; ++u)
                out.v[u] = to_t<T>(j + u <= t ? gv[u] * expf(st_ - s_cum[j + u]) * s_dt[j + u] : 0.f);
        } else {
#pragma unroll
            for (int u = 0; u < 4; ++u) out.v[u] = to_t<T>(0.f);
        }
        *reinterpret_cast<Packed<T, 4>*>(s_M + r * ldm + j) = out;
    }
    __pipeline_wait_prior(1);  // this thread's C and H_c copies
    __syncthreads();           // everyone's, and M, s_e

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rt = warp / Sh::CG, col0 = (warp % Sh::CG) * WC * 16;
    const bool active = r0 + rt * 16 < k.valid;  // warp-uniform; an idle warp still meets the barriers
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> inter[WC], intra[WC];
#pragma unroll
    for (int w = 0; w < WC; ++w) {
        wmma::fill_fragment(inter[w], 0.f);
        wmma::fill_fragment(intra[w], 0.f);
    }
    if (active) {  // inter-chunk term C_t H_c (scaled by exp(s_t) in the epilogue)
        for (int n = 0; n < N; n += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;  // (t, n) = s_C[t * ldc + n]
            wmma::load_matrix_sync(a, s_C + rt * 16 * ldc + n, ldc);
#pragma unroll
            for (int w = 0; w < WC; ++w) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bm;  // (n, p) = s_H[p * ldc + n]
                wmma::load_matrix_sync(bm, s_H + (col0 + w * 16) * ldc + n, ldc);
                wmma::mma_sync(inter[w], a, bm, inter[w]);
            }
        }
    }
    __pipeline_wait_prior(0);  // x
    __syncthreads();
    if (active) {  // intra-chunk term M x over the source tiles up to the diagonal
        const int last = (r0 / 16) + rt;  // this warp's row tile within the chunk
        for (int jt = 0; jt <= last; ++jt) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;  // (t, j) = s_M[t * ldm + j]
            wmma::load_matrix_sync(a, s_M + rt * 16 * ldm + jt * 16, ldm);
#pragma unroll
            for (int w = 0; w < WC; ++w) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> xb;  // (j, p) = s_x[j * ldx + p]
                wmma::load_matrix_sync(xb, s_x + jt * 16 * ldx + col0 + w * 16, ldx);
                wmma::mma_sync(intra[w], a, xb, intra[w]);
            }
        }
    }
    __syncthreads();  // C and H_c are consumed: the staging below reuses them
    if (!active) return;
    // epilogue: y = exp(s_t) (C H_c) + M x + D x, gated by silu(z)
    float* w_inter = stage + warp * 512;
    float* w_intra = w_inter + 256;
    const float Dh = ld_or(p.D, k.h, 0.f);
#pragma unroll
    for (int w = 0; w < WC; ++w) {
        wmma::store_matrix_sync(w_inter, inter[w], 16, wmma::mem_row_major);
        wmma::store_matrix_sync(w_intra, intra[w], 16, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 256; i += 32) {
            const int r = rt * 16 + i / 16, q = col0 + w * 16 + i % 16, t = r0 + r;
            if (t >= k.valid) continue;
            float y = s_e[r] * w_inter[i] + w_intra[i] + Dh * static_cast<float>(s_x[t * ldx + q]);
            const int64_t gi = ((k.b * p.seqlen + k.t0 + t) * H + k.h) * P + q;
            if (p.z.data) y *= silu(ld(p.z.data, p.z.dtype, gi));
            st(p.y.data, p.y.dtype, gi, y);
        }
        __syncwarp();
    }
#endif
}

struct Layout {
    int Q = 0;  // 0: the chunked form does not apply
    size_t states_smem = 0, output_smem = 0, cb_smem = 0;
};

template <int Q>
size_t output_smem_of(int P, int N) {
    const int PT = P / 16, BM = OutShape<Q, 2>::BM, wc = EP_SSD_WCOLS < PT ? EP_SSD_WCOLS : PT;
    const int warps = (BM / 16) * (PT / wc);
    return static_cast<size_t>((2 * Q + BM) * 4 + out_stage_bytes(BM, P, N, warps)) +
           static_cast<size_t>(Q) * (P + kPad) * 2 + static_cast<size_t>(BM) * (Q + kPad) * 2;
}

template <int Q>
bool try_layout(const ep_ssd_params& p, int optin, Layout& l) {
    const int P = p.headdim, N = p.dstate;
    const int64_t blocks = ceil_div(p.seqlen, Q) * (Q / OutShape<Q, 2>::BM) * p.nheads;  // pass 3's grid.x
    const size_t out = output_smem_of<Q>(P, N), cb = 2 * Q * (N + kPad) * 2;
    const size_t states = 2 * Q * 4 + (Q * (P + kPad) + Q * (N + kPad)) * 2;
    if (std::max({out, cb, states}) > static_cast<size_t>(optin) || blocks > 0x7fffffff) return false;
    l.Q = Q;
    l.output_smem = out;
    l.cb_smem = cb;
    l.states_smem = states;
    return true;
}

Layout layout_of(const ep_ssd_params& p) {
    Layout l;
    const int P = p.headdim, N = p.dstate;
    const bool types = (p.x.dtype == EP_F16 || p.x.dtype == EP_BF16) && p.B.dtype == p.x.dtype && p.C.dtype == p.x.dtype;
    // 16-byte row loads; a NULL pointer (a workspace query) counts as aligned
    const bool aligned = ((reinterpret_cast<uintptr_t>(p.x.data) | reinterpret_cast<uintptr_t>(p.B.data) |
                           reinterpret_cast<uintptr_t>(p.C.data)) & 15u) == 0;
    if (!types || !aligned || (P != 32 && P != 64 && P != 128) || N % 16 != 0 || N > 256 || compute_major() < 8) return l;
    const int optin = max_smem_optin();
    // EP_SSD_Q where its shared memory fits (longer chunks pass fewer states between passes), else 64
    if (!try_layout<EP_SSD_Q>(p, optin, l)) try_layout<64>(p, optin, l);
    return l;
}

template <typename K>
int set_smem(K kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return 0;
    return static_cast<int>(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename T, int Q, int PT>
int launch(const ep_ssd_params& p, const Layout& l, float* S, float* decay, void* Ht_raw, float* CB, int nchunks,
           cudaStream_t s) {
    using Sh = OutShape<Q, PT>;
    T* Ht = static_cast<T*>(Ht_raw);
    if (int e = set_smem(ssd_cb_kernel<T, Q>, l.cb_smem)) return e;
    ssd_cb_kernel<T, Q><<<dim3(nchunks, p.ngroups, p.batch), Q * 2, l.cb_smem, s>>>(p, CB, nchunks);
    if (int e = launch_status()) return e;
    if (int e = set_smem(ssd_states_kernel<T, Q>, l.states_smem)) return e;
    if (int e = set_smem(ssd_output_kernel<T, Q, PT>, l.output_smem)) return e;
    ssd_states_kernel<T, Q><<<dim3(nchunks, p.nheads, p.batch), EP_SSD_STATE_WARPS * 32, l.states_smem, s>>>(
        p, S, decay, nchunks);
    if (int e = launch_status()) return e;
    const int64_t n = static_cast<int64_t>(p.batch) * p.nheads * p.headdim * p.dstate / EP_SSD_PASS_VEC;
    ssd_pass_kernel<T, EP_SSD_PASS_VEC><<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, s>>>(p, S, decay, Ht, nchunks);
    if (int e = launch_status()) return e;
    const unsigned blocks = static_cast<unsigned>(static_cast<int64_t>(nchunks) * Sh::MT * p.nheads);
    ssd_output_kernel<T, Q, PT><<<dim3(blocks, p.batch), Sh::WARPS * 32, l.output_smem, s>>>(p, Ht, CB, nchunks);
    return launch_status();
}

template <typename T, int Q>
int launch_p(const ep_ssd_params& p, const Layout& l, float* S, float* decay, void* Ht, float* CB, int nchunks,
             cudaStream_t s) {
    switch (p.headdim) {
        case 32: return launch<T, Q, 2>(p, l, S, decay, Ht, CB, nchunks, s);
        case 64: return launch<T, Q, 4>(p, l, S, decay, Ht, CB, nchunks, s);
        default: return launch<T, Q, 8>(p, l, S, decay, Ht, CB, nchunks, s);
    }
}

template <typename T>
int launch_t(const ep_ssd_params& p, const Layout& l, float* S, float* decay, void* Ht, float* CB, int nchunks,
             cudaStream_t s) {
    return l.Q == EP_SSD_Q ? launch_p<T, EP_SSD_Q>(p, l, S, decay, Ht, CB, nchunks, s)
                           : launch_p<T, 64>(p, l, S, decay, Ht, CB, nchunks, s);
}

}  // namespace

bool ssd_chunked_applies(const ep_ssd_params& p) { return layout_of(p).Q > 0; }

namespace {
struct Workspace {
    size_t states, entering, decay, cb;  // bytes of S (float32), Ht (16-bit), decay, CB (float32), 256-aligned
};

Workspace workspace_of(const ep_ssd_params& p, int Q) {
    const int64_t chunks = ceil_div(p.seqlen, Q), heads = static_cast<int64_t>(p.batch) * chunks * p.nheads;
    const size_t elems = static_cast<size_t>(heads) * p.headdim * p.dstate;
    const size_t cb = static_cast<size_t>(p.batch) * chunks * p.ngroups * Q * Q;
    auto round = [](size_t v) { return ((v + 255) / 256) * 256; };
    return {round(elems * sizeof(float)), round(elems * 2), round(static_cast<size_t>(heads) * sizeof(float)),
            round(cb * sizeof(float))};
}
}  // namespace

size_t ssd_chunked_workspace(const ep_ssd_params& p) {
    const Layout l = layout_of(p);
    if (l.Q == 0 || p.seqlen <= 0) return 0;
    const Workspace w = workspace_of(p, l.Q);
    return w.states + w.entering + w.decay + w.cb;
}

int ssd_chunked(const ep_ssd_params& p, void* workspace, cudaStream_t stream) {
    const Layout l = layout_of(p);
    if (l.Q == 0) return EP_ERR_UNSUPPORTED;
    if (p.seqlen == 0) return EP_OK;
    const int nchunks = static_cast<int>(ceil_div(p.seqlen, l.Q));
    const Workspace w = workspace_of(p, l.Q);
    char* base = static_cast<char*>(workspace);
    float* S = reinterpret_cast<float*>(base);
    void* Ht = base + w.states;
    float* decay = reinterpret_cast<float*>(base + w.states + w.entering);
    float* CB = reinterpret_cast<float*>(base + w.states + w.entering + w.decay);
    if (p.x.dtype == EP_F16) return launch_t<__half>(p, l, S, decay, Ht, CB, nchunks, stream);
    return launch_t<__nv_bfloat16>(p, l, S, decay, Ht, CB, nchunks, stream);
}

}  // namespace ep
