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

// Pass 1: S_c = (x * w)^T B per (chunk, head), w_t = exp(s_end - s_t) dt_t; and the chunk's decay exp(s_end).
template <typename T, int Q>
__global__ void __launch_bounds__(Q * 2) ssd_states_kernel(ep_ssd_params p, float* S, float* decay, int nchunks) {
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
    for (int i = threadIdx.x; i < Q * P; i += blockDim.x) {
        T& v = s_x[(i / P) * ldx + i % P];
        v = to_t<T>(static_cast<float>(v) * s_dt[i / P]);
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    const int ntiles = (P / 16) * (N / 16);
    float* out = S + ((k.b * nchunks + k.c) * H + k.h) * static_cast<int64_t>(P) * N;
    for (int tile = warp; tile < ntiles; tile += nwarps) {
        const int pt = tile / (N / 16), nt = tile % (N / 16);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.f);
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
// final_state (float32).
template <typename T>
__global__ void ssd_pass_kernel(ep_ssd_params p, const float* S, const float* decay, T* Ht, int nchunks) {
    const int64_t PN = static_cast<int64_t>(p.headdim) * p.dstate;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.batch * p.nheads * PN) return;
    const int64_t e = i % PN, bh = i / PN, h = bh % p.nheads, b = bh / p.nheads;
    float run = ld_or(p.initial_state, i, 0.f);  // [batch, nheads, headdim, dstate]
    for (int c = 0; c < nchunks; ++c) {
        const int64_t j = ((b * nchunks + c) * p.nheads + h) * PN + e;
        Ht[j] = to_t<T>(run);
        run = decay[(b * nchunks + c) * p.nheads + h] * run + S[j];
    }
    st(p.final_state.data, p.final_state.dtype, i, run);
}

// Pass 3: y for one (chunk, head); warp w owns rows [16w, 16w + 16) of the chunk. PT = headdim / 16.
template <typename T, int Q, int PT>
__global__ void __launch_bounds__(Q * 2) ssd_output_kernel(ep_ssd_params p, const T* Ht, const float* CB, int nchunks) {
#if EP_TENSOR_CORES
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int P = PT * 16;
    const int N = p.dstate, H = p.nheads;
    const ChunkIdx k = chunk_idx(p, Q);
    float* s_dt = reinterpret_cast<float*>(smem);
    float* s_cum = s_dt + Q;
    const int ldb = N + kPad;
    constexpr int ldx = P + kPad;
    T* s_C = reinterpret_cast<T*>(s_cum + Q);  // [Q, N (+pad)]
    T* s_x = s_C + Q * ldb;                    // [Q, P (+pad)]
    float* scratch = reinterpret_cast<float*>(s_x + Q * ldx);  // per warp: 16x16 float + 16x16 T
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* w_f = scratch + warp * (256 + 128);
    T* w_t = reinterpret_cast<T*>(w_f + 256);

    const int64_t bc_row0 = ((k.b * p.seqlen + k.t0) * p.ngroups + k.g) * N, bc_stride = static_cast<int64_t>(p.ngroups) * N;
    load_rows(p.C.data, s_C, ldb, Q, N, k.valid, bc_row0, bc_stride);
    load_rows(p.x.data, s_x, ldx, Q, P, k.valid, ((k.b * p.seqlen + k.t0) * H + k.h) * P, static_cast<int64_t>(H) * P);
    chunk_decay<Q>(p, k, s_dt, s_cum);  // while the rows arrive
    const T* Hc = Ht + ((k.b * nchunks + k.c) * H + k.h) * static_cast<int64_t>(P) * N;  // [P, N]
    const float* G = CB + ((k.b * nchunks + k.c) * p.ngroups + k.g) * static_cast<int64_t>(Q) * Q;  // [Q, Q]
    wait_rows();
    __syncthreads();

    const int r0 = warp * 16;
    if (r0 >= k.valid) return;  // warp-uniform; no block barrier follows
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[PT];
    // inter-chunk term: (C H^T) scaled per row by exp(s_t)
#pragma unroll
    for (int pt = 0; pt < PT; ++pt) {
        wmma::fill_fragment(acc[pt], 0.f);
        for (int n = 0; n < N; n += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;  // (t, n) = s_C[t * ldb + n]
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;  // (n, p) = Hc[p * N + n]
            wmma::load_matrix_sync(a, s_C + r0 * ldb + n, ldb);
            wmma::load_matrix_sync(b, Hc + pt * 16 * N + n, N);
            wmma::mma_sync(acc[pt], a, b, acc[pt]);
        }
        wmma::store_matrix_sync(w_f, acc[pt], 16, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 256; i += 32) w_f[i] *= expf(s_cum[r0 + i / 16]);
        __syncwarp();
        wmma::load_matrix_sync(acc[pt], w_f, 16, wmma::mem_row_major);
        __syncwarp();
    }
    // intra-chunk term, column tiles up to the diagonal: M = CB * exp(s_t - s_j) * dt_j (j <= t), y += M x
    for (int j0 = 0; j0 <= r0; j0 += 16) {
        for (int i = lane; i < 256; i += 32) {
            const int t = r0 + i / 16, j = j0 + i % 16;
            w_t[i] = to_t<T>(j <= t ? G[t * Q + j] * expf(s_cum[t] - s_cum[j]) * s_dt[j] : 0.f);
        }
        __syncwarp();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> m;
        wmma::load_matrix_sync(m, w_t, 16);
#pragma unroll
        for (int pt = 0; pt < PT; ++pt) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> xb;  // (j, p) = s_x[j * ldx + p]
            wmma::load_matrix_sync(xb, s_x + j0 * ldx + pt * 16, ldx);
            wmma::mma_sync(acc[pt], m, xb, acc[pt]);
        }
        __syncwarp();
    }
    // epilogue: + D x, gate by silu(z), store
    const float Dh = ld_or(p.D, k.h, 0.f);
#pragma unroll
    for (int pt = 0; pt < PT; ++pt) {
        wmma::store_matrix_sync(w_f, acc[pt], 16, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 256; i += 32) {
            const int r = i / 16, q = pt * 16 + i % 16, t = r0 + r;
            if (t >= k.valid) continue;
            float y = w_f[i] + Dh * static_cast<float>(s_x[t * ldx + q]);
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

Layout layout_of(const ep_ssd_params& p) {
    Layout l;
    const int P = p.headdim, N = p.dstate;
    const bool types = (p.x.dtype == EP_F16 || p.x.dtype == EP_BF16) && p.B.dtype == p.x.dtype && p.C.dtype == p.x.dtype;
    // 16-byte row loads; a NULL pointer (a workspace query) counts as aligned
    const bool aligned = ((reinterpret_cast<uintptr_t>(p.x.data) | reinterpret_cast<uintptr_t>(p.B.data) |
                           reinterpret_cast<uintptr_t>(p.C.data)) & 15u) == 0;
    if (!types || !aligned || (P != 32 && P != 64 && P != 128) || N % 16 != 0 || N > 256 || compute_major() < 8) return l;
    const int optin = max_smem_optin();
    for (int Q : {128, 64}) {  // longer chunks pass fewer states between passes
        const size_t out = 2 * Q * 4 + (Q * (N + kPad) + Q * (P + kPad)) * 2 + (Q / 16) * (256 * 4 + 256 * 2);
        const size_t cb = 2 * Q * (N + kPad) * 2;
        if (std::max(out, cb) <= static_cast<size_t>(optin)) {
            l.Q = Q;
            l.output_smem = out;
            l.cb_smem = cb;
            l.states_smem = 2 * Q * 4 + (Q * (P + kPad) + Q * (N + kPad)) * 2;
            return l;
        }
    }
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
    T* Ht = static_cast<T*>(Ht_raw);
    const dim3 grid(nchunks, p.nheads, p.batch);
    if (int e = set_smem(ssd_cb_kernel<T, Q>, l.cb_smem)) return e;
    ssd_cb_kernel<T, Q><<<dim3(nchunks, p.ngroups, p.batch), Q * 2, l.cb_smem, s>>>(p, CB, nchunks);
    if (int e = launch_status()) return e;
    if (int e = set_smem(ssd_states_kernel<T, Q>, l.states_smem)) return e;
    if (int e = set_smem(ssd_output_kernel<T, Q, PT>, l.output_smem)) return e;
    ssd_states_kernel<T, Q><<<grid, Q * 2, l.states_smem, s>>>(p, S, decay, nchunks);
    if (int e = launch_status()) return e;
    const int64_t n = static_cast<int64_t>(p.batch) * p.nheads * p.headdim * p.dstate;
    ssd_pass_kernel<T><<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, s>>>(p, S, decay, Ht, nchunks);
    if (int e = launch_status()) return e;
    ssd_output_kernel<T, Q, PT><<<grid, Q * 2, l.output_smem, s>>>(p, Ht, CB, nchunks);
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
    return l.Q == 128 ? launch_p<T, 128>(p, l, S, decay, Ht, CB, nchunks, s)
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
