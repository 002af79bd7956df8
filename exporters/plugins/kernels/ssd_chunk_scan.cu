// Mamba2 SSD scan (prefill). 16-bit inputs of the usual sizes take the chunked tensor-core form of
// ssd_chunked.cu; the rest (float32, odd head sizes) this recurrence: a head's state [headdim, dstate] is spread over a
// block, `tpp` lanes per p holding dstate/tpp states each in registers, y reduced over those
// lanes by shuffles. The decay is one scalar per (head, step), so a step costs two FMAs per state.
// Parallelism along the sequence comes from the chunk plan of common.cuh.
#include <algorithm>

#include "common.cuh"

namespace ep {
namespace {

constexpr int kNpt = 16;        // max states per thread (registers)
constexpr int kMaxThreads = 256;
constexpr int kSmemBudget = 44 * 1024;  // stays under the default 48 KiB of dynamic shared memory

struct SsdShape {
    int tpp;  // lanes per p (power of two <= 32)
    int pt;   // p values per block
    int tile; // time steps per shared-memory tile
    int ptiles;
    int threads;
};

SsdShape shape_of(const ep_ssd_params& p) {
    SsdShape s;
    s.tpp = std::min(32, next_pow2(static_cast<int>(ceil_div(p.dstate, kNpt))));
    const int lanes_multiple = std::max(1, 32 / s.tpp);  // whole warps per block, for the shuffles
    s.pt = std::min(kMaxThreads / s.tpp, static_cast<int>(ceil_div(p.headdim, lanes_multiple) * lanes_multiple));
    s.threads = s.pt * s.tpp;
    s.ptiles = static_cast<int>(ceil_div(p.headdim, s.pt));
    const int per_step = (3 * s.pt + 2 + 2 * p.dstate) * static_cast<int>(sizeof(float));
    s.tile = std::max(1, std::min(64, kSmemBudget / per_step));
    return s;
}

// grid: (nheads * ptiles, chunks, batch); dynamic shared memory laid out per time tile as
// x[tile][pt], z[tile][pt], y[tile][pt], dt[tile], dA[tile], B[tile][N], C[tile][N].
template <bool FINAL>
__global__ void ssd_kernel(ep_ssd_params p, SsdShape sh, ChunkWork w) {
    extern __shared__ float smem[];
    const int TT = sh.tile, PT = sh.pt, N = p.dstate, H = p.nheads, P = p.headdim;
    float* s_x = smem;
    float* s_z = s_x + TT * PT;
    float* s_y = s_z + TT * PT;
    float* s_dt = s_y + TT * PT;
    float* s_dA = s_dt + TT;
    float* s_B = s_dA + TT;
    float* s_C = s_B + TT * N;

    const int tid = threadIdx.x;
    const int pl = tid / sh.tpp, j = tid % sh.tpp;
    const int h = blockIdx.x / sh.ptiles;
    const int p0 = (blockIdx.x % sh.ptiles) * PT;
    const int pp = p0 + pl;
    const bool active = pp < P;
    const int g = h / (H / p.ngroups);
    const int c = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int64_t L = p.seqlen;
    const int64_t t_begin = static_cast<int64_t>(c) * w.chunk_len;
    const int64_t t_end = min(L, t_begin + w.chunk_len);

    const float Ah = ld(p.A.data, p.A.dtype, h);
    const float Dh = ld_or(p.D, h, 0.f);
    const float bias = ld_or(p.dt_bias, h, 0.f);
    const bool has_z = FINAL && p.z.data != nullptr;

    const int64_t srow = ((b * H + h) * P + pp) * N;  // [batch, nheads, headdim, dstate]
    const int64_t per_chunk = static_cast<int64_t>(p.batch) * H * P * N;
    float st_[kNpt];
#pragma unroll
    for (int i = 0; i < kNpt; ++i) {
        const int n = j + sh.tpp * i;
        float v = 0.f;
        if (active && n < N) {
            if (c == 0) v = ld_or(p.initial_state, srow + n, 0.f);
            else if (FINAL) v = w.hs[(c - 1) * per_chunk + srow + n];
        }
        st_[i] = v;
    }
    float dt_sum = 0.f;

    for (int64_t t0 = t_begin; t0 < t_end; t0 += TT) {
        const int tl = static_cast<int>(t_end - t0 < TT ? t_end - t0 : TT);
        // [time, p] tiles of x and z for this block's p range
        auto x_g = [&](int i) -> int64_t {
            const int tt = i / PT, q = i % PT;
            return (tt < tl && p0 + q < P) ? (((b * L + t0 + tt) * H) + h) * P + p0 + q : -1;
        };
        load_tile(p.x, TT * PT, x_g, [&](int i, float v) { s_x[i] = v; });
        if (has_z) load_tile(p.z, TT * PT, x_g, [&](int i, float v) { s_z[i] = v; });
        for (int tt = tid; tt < TT; tt += blockDim.x) {
            float dt = 0.f;
            if (tt < tl) {
                dt = ld(p.dt.data, p.dt.dtype, (b * L + t0 + tt) * H + h) + bias;
                if (p.dt_softplus) dt = softplus(dt);
                dt = fminf(fmaxf(dt, p.dt_min), p.dt_max);
            }
            s_dt[tt] = dt;
            s_dA[tt] = expf(dt * Ah);
        }
        // [time, state] tiles of this head's group of B and C
        auto bc_g = [&](int i) -> int64_t {
            const int tt = i / N, n = i % N;
            return tt < tl ? ((b * L + t0 + tt) * p.ngroups + g) * N + n : -1;
        };
        load_tile(p.B, TT * N, bc_g, [&](int i, float v) { s_B[i] = v; });
        if (FINAL) load_tile(p.C, TT * N, bc_g, [&](int i, float v) { s_C[i] = v; });
        __syncthreads();
        for (int tt = 0; tt < tl; ++tt) {
            const float dA = s_dA[tt];
            const float xv = s_x[tt * PT + pl];
            const float xdt = xv * s_dt[tt];
            const float* Bt = s_B + tt * N;
            const float* Ct = s_C + tt * N;
            float acc = 0.f;
#pragma unroll
            for (int i = 0; i < kNpt; ++i) {
                const int n = j + sh.tpp * i;
                if (n < N) {
                    st_[i] = dA * st_[i] + xdt * Bt[n];
                    if (FINAL) acc += st_[i] * Ct[n];
                }
            }
            if (FINAL) {
                acc = group_sum(acc, sh.tpp);
                if (j == 0) s_y[tt * PT + pl] = acc + Dh * xv;
            } else {
                dt_sum += s_dt[tt];
            }
        }
        __syncthreads();
        if (FINAL) {
            for (int i = tid; i < TT * PT; i += blockDim.x) {
                const int tt = i / PT, q = i % PT;
                if (tt < tl && p0 + q < P) {
                    float y = s_y[i];
                    if (has_z) y *= silu(s_z[i]);
                    st(p.y.data, p.y.dtype, (((b * L + t0 + tt) * H) + h) * P + p0 + q, y);
                }
            }
            __syncthreads();
        }
    }
    if (!FINAL && tid == 0 && blockIdx.x % sh.ptiles == 0)
        w.S[(static_cast<int64_t>(c) * p.batch + b) * H + h] = dt_sum;
    if (!active) return;
#pragma unroll
    for (int i = 0; i < kNpt; ++i) {
        const int n = j + sh.tpp * i;
        if (n >= N) continue;
        if (!FINAL) w.hs[c * per_chunk + srow + n] = st_[i];
        else if (c == w.nchunks - 1) st(p.final_state.data, p.final_state.dtype, srow + n, st_[i]);
    }
}

ChunkPlan plan(const ep_ssd_params& p, const SsdShape& sh) {
    return plan_chunks(static_cast<int64_t>(p.batch) * p.nheads * sh.ptiles, sh.threads / 32, p.seqlen, sh.tile);
}

}  // namespace
}  // namespace ep

// The chunked tensor-core form where it applies (ssd_chunked.cu), else this recurrence; the workspace covers
// whichever runs.
extern "C" size_t edgeports_ssd_chunk_scan_workspace(const ep_ssd_params* p) {
    if (!p || p->batch <= 0 || p->nheads <= 0 || p->headdim <= 0 || p->dstate <= 0 || p->seqlen <= 0) return 0;
    const ep::SsdShape sh = ep::shape_of(*p);
    const size_t recurrence = ep::chunk_workspace_bytes(ep::plan(*p, sh), static_cast<int64_t>(p->batch) * p->nheads,
                                                        static_cast<int64_t>(p->headdim) * p->dstate);
    // a query without data (a plugin sizing from its max shapes) cannot tell whether the run's pointers will
    // be aligned for the chunked form, so it covers both
    if (p->ngroups > 0 && p->nheads % p->ngroups == 0 && ep::ssd_chunked_applies(*p))
        return std::max(recurrence, ep::ssd_chunked_workspace(*p));
    return recurrence;
}

extern "C" int edgeports_ssd_chunk_scan(const ep_ssd_params* p, void* workspace, size_t workspace_bytes, void* stream) {
    using namespace ep;
    if (!p || p->batch <= 0 || p->batch > 65535 || p->seqlen < 0 || p->nheads <= 0 || p->headdim <= 0 ||
        p->dstate <= 0 || p->ngroups <= 0 || p->nheads % p->ngroups != 0)
        return EP_ERR_ARGS;
    if (!valid_in(p->x, true) || !valid_in(p->dt, true) || !valid_in(p->A, true) || !valid_in(p->B, true) ||
        !valid_in(p->C, true) || !valid_in(p->D, false) || !valid_in(p->z, false) || !valid_in(p->dt_bias, false) ||
        !valid_in(p->initial_state, false) || !valid_out(p->y) || !valid_out(p->final_state))
        return EP_ERR_ARGS;
    if (ssd_chunked_applies(*p)) {
        const size_t need = ssd_chunked_workspace(*p);
        if (need > 0 && (!workspace || workspace_bytes < need)) return EP_ERR_WORKSPACE;
        return ssd_chunked(*p, workspace, static_cast<cudaStream_t>(stream));
    }
    if (p->dstate > 32 * kNpt) return EP_ERR_UNSUPPORTED;
    const SsdShape sh = shape_of(*p);
    const ChunkPlan pl = plan(*p, sh);
    const size_t need = edgeports_ssd_chunk_scan_workspace(p);
    if (need > 0 && (!workspace || workspace_bytes < need)) return EP_ERR_WORKSPACE;
    const ChunkWork w = chunk_work(pl, static_cast<int64_t>(p->batch) * p->nheads,
                                   static_cast<int64_t>(p->headdim) * p->dstate, workspace);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const size_t smem = static_cast<size_t>(3 * sh.pt + 2 + 2 * p->dstate) * sh.tile * sizeof(float);
    const unsigned gx = static_cast<unsigned>(p->nheads) * sh.ptiles;
    if (w.nchunks > 1) {
        ssd_kernel<false><<<dim3(gx, w.nchunks - 1, p->batch), sh.threads, smem, s>>>(*p, sh, w);
        if (int e = launch_status()) return e;
        // A[h]: one decay rate per head, shared by its headdim * dstate states
        if (int e = combine_chunks(w.hs, w.S, p->A, 1, 0, w.nchunks, p->batch, p->nheads,
                                   static_cast<int64_t>(p->headdim) * p->dstate, s))
            return e;
    }
    ssd_kernel<true><<<dim3(gx, w.nchunks, p->batch), sh.threads, smem, s>>>(*p, sh, w);
    return launch_status();
}
