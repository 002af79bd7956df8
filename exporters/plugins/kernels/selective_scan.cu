// Mamba1 selective scan (prefill). Each channel's dstate-long state is split over LANES lanes of a warp (SPL
// states each, in registers), so batch 1 already gives the GPU dim * LANES threads and one pass over the
// sequence suffices (mamba-2.8b, lanes 8: 1280 warps). The old one-thread-per-channel form had to split the
// sequence into chunks and scan it twice to fill the GPU, doubling the exp2 work that bounds the kernel.
//
// Per tile of T steps a block (CH channels of one batch row):
//  1. stores the tile prefetched into registers during the previous tile (u, delta, z: [CH, T]; B, C: [N, T];
//     coalesced 4-element loads along time) into shared memory as float32;
//  2. computes the per-(channel, step) work once, spread over all threads: dt = softplus(delta + bias),
//     dt * u, silu(z);
//  3. scans: per step each lane updates its SPL states (one exp2 each; A is pre-scaled by log2(e)) and keeps
//     its partial C.h for every step of the tile in registers;
//  4. reduces the partials over the channel's lanes with a butterfly that also scatters the steps (each round
//     halves the values a lane holds: T * (1 - 1/LANES) shuffles per tile instead of log2(LANES) per step);
//     lane g ends with the full sums of steps [g * T/LANES, (g+1) * T/LANES), adds D * u, gates by silu(z);
//  5. writes y back with the same coalesced mapping.
// Only where even this cannot fill the GPU (few channels: batch * dim * LANES / 32 below EP_SCAN_CHUNK_WARPS
// warps per SM) is the sequence split into chunks: pass 1 records the chunks' end states and dt sums, the
// combine kernel chains them, pass 2 rescans every chunk from its true entering state.
#include <algorithm>

#include "common.cuh"

// Tuning knobs (benchmarks/plugin_variants.py builds the library with -D overrides and times them).
#ifndef EP_SCAN_LANES  // lanes per channel at dstate <= 16 (1, 2, 4, 8 or 16); larger dstates scale it up to 32
#define EP_SCAN_LANES 8
#endif
#ifndef EP_SCAN_TILE  // time steps per shared-memory tile (a multiple of 8 and of the lanes per channel)
#define EP_SCAN_TILE 32
#endif
#ifndef EP_SCAN_THREADS  // threads per block at dstate <= 32 (small blocks even out the blocks per SM)
#define EP_SCAN_THREADS 64
#endif
#ifndef EP_SCAN_MIN_BLOCKS  // __launch_bounds__ blocks per SM: 1 leaves ptxas all registers (sm_90: ~170, no
#define EP_SCAN_MIN_BLOCKS 1  // spills); 8 caps them at 128 for more resident warps
#endif
#ifndef EP_SCAN_CHUNK_WARPS  // below this many warps per SM the sequence is chunked (two passes)
#define EP_SCAN_CHUNK_WARPS 4
#endif
#ifndef EP_SCAN_CHUNK_TARGET  // warps per SM the chunking aims for
#define EP_SCAN_CHUNK_TARGET 16
#endif

namespace ep {
namespace {

constexpr int kMinChunkLen = 256;
constexpr int kMaxChunks = 64;

// The layout for states padded to NMAX (16, 32 or 64).
template <int NMAX>
struct Cfg {
    static constexpr int kSpl16 = 16 / EP_SCAN_LANES;  // states per lane at dstate 16
    static constexpr int kLanes = NMAX / kSpl16 > 32 ? 32 : NMAX / kSpl16;
    static constexpr int kSpl = NMAX / kLanes;  // states per lane
    static constexpr int kThreads = EP_SCAN_THREADS > 2 * NMAX ? EP_SCAN_THREADS : 2 * NMAX;
    static constexpr int kChannels = kThreads / kLanes;  // per block
    static constexpr int kTile = EP_SCAN_TILE > kLanes ? EP_SCAN_TILE : kLanes;
    // +4 floats per row: rows stay 16-byte aligned and the 8 rows that a quarter-warp reads with 16-byte
    // loads (one per lane of a channel, or per channel) fall in distinct banks
    static constexpr int kRow = kTile + 4;
    static_assert(16 % EP_SCAN_LANES == 0 && EP_SCAN_LANES <= 16, "EP_SCAN_LANES: 1, 2, 4, 8 or 16");
    static_assert(kTile % 8 == 0 && kTile % kLanes == 0, "EP_SCAN_TILE: a multiple of 8 and of the lanes");
    static_assert(kThreads % 32 == 0 && kThreads <= 1024, "EP_SCAN_THREADS: a multiple of 32, <= 1024");
    static_assert((4 * kChannels + 2 * NMAX) * kRow * 4 <= 46 * 1024, "tile exceeds static shared memory");
};

// ---- raw 4-element packs: loaded into registers a tile ahead, converted only when stored ----------------
// t[i..i+4) as raw bits (float32: x..w; 16-bit: x = e0 | e1 << 16, y = e2 | e3 << 16), zeros past the first
// n. `vec`: i is a multiple of 4 and the base is aligned, so one 16- or 8-byte load serves.
__device__ __forceinline__ uint4 ld_raw4(const void* base, int dt, int64_t i, int n, bool vec) {
    uint4 r = make_uint4(0u, 0u, 0u, 0u);
    if (n <= 0) return r;
    if (dt == EP_F32) {
        const float* f = static_cast<const float*>(base) + i;
        if (vec && n >= 4) return *reinterpret_cast<const uint4*>(f);
        r.x = __float_as_uint(f[0]);
        if (n > 1) r.y = __float_as_uint(f[1]);
        if (n > 2) r.z = __float_as_uint(f[2]);
        if (n > 3) r.w = __float_as_uint(f[3]);
    } else {
        const unsigned short* h = static_cast<const unsigned short*>(base) + i;
        if (vec && n >= 4) {
            const uint2 v = *reinterpret_cast<const uint2*>(h);
            r.x = v.x;
            r.y = v.y;
            return r;
        }
        r.x = h[0];
        if (n > 1) r.x |= static_cast<unsigned>(h[1]) << 16;
        if (n > 2) r.y = h[2];
        if (n > 3) r.y |= static_cast<unsigned>(h[3]) << 16;
    }
    return r;
}

__device__ __forceinline__ float from16(unsigned bits, int dt) {
    return dt == EP_F16 ? __half2float(__ushort_as_half(static_cast<unsigned short>(bits)))
                        : __uint_as_float(bits << 16);  // bfloat16: the high half of a float32
}

__device__ __forceinline__ float4 unpack4(uint4 r, int dt) {
    if (dt == EP_F32) return make_float4(__uint_as_float(r.x), __uint_as_float(r.y), __uint_as_float(r.z),
                                         __uint_as_float(r.w));
    return make_float4(from16(r.x & 0xffffu, dt), from16(r.x >> 16, dt), from16(r.y & 0xffffu, dt),
                       from16(r.y >> 16, dt));
}

__device__ __forceinline__ unsigned short to16(float v, int dt) {
    return dt == EP_F16 ? __half_as_ushort(__float2half_rn(v)) : __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// The first n (<= 4) of v to t[i..i+4); `vec` as for ld_raw4.
__device__ __forceinline__ void st4(void* base, int dt, int64_t i, float4 v, int n, bool vec) {
    if (dt == EP_F32) {
        float* f = static_cast<float*>(base) + i;
        if (vec && n >= 4) {
            *reinterpret_cast<float4*>(f) = v;
            return;
        }
        f[0] = v.x;
        if (n > 1) f[1] = v.y;
        if (n > 2) f[2] = v.z;
        if (n > 3) f[3] = v.w;
        return;
    }
    unsigned short* h = static_cast<unsigned short*>(base) + i;
    const unsigned short e0 = to16(v.x, dt), e1 = to16(v.y, dt), e2 = to16(v.z, dt), e3 = to16(v.w, dt);
    if (vec && n >= 4) {
        *reinterpret_cast<uint2*>(h) = make_uint2(e0 | static_cast<unsigned>(e1) << 16, e2 | static_cast<unsigned>(e3) << 16);
        return;
    }
    h[0] = e0;
    if (n > 1) h[1] = e1;
    if (n > 2) h[2] = e2;
    if (n > 3) h[3] = e3;
}

__device__ __forceinline__ float ex2(float x) {  // MUFU.EX2 alone (exp2f adds a denormal-range fix-up)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Butterfly reduce-scatter over aligned groups of 2*O lanes: v[0..M) are a lane's partial sums of M steps; after
// it, v[i] (i < M / (2*O)) holds the group's full sum for step g * M / (2*O) + i, g = lane % (2*O). Every
// round a lane keeps the half of its steps that its bit selects and sends the other half to its partner.
template <int O, int M, int S>
__device__ __forceinline__ void reduce_scatter(float (&v)[S], int g) {
    if constexpr (O > 0) {
        const bool hi = (g & O) != 0;
#pragma unroll
        for (int i = 0; i < M / 2; ++i) {
            const float send = hi ? v[i] : v[i + M / 2];
            const float keep = hi ? v[i + M / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        reduce_scatter<O / 2, M / 2>(v, g);
    }
}

// Bits of `vec` (host: alignment of each tensor for 4-element packs).
enum : unsigned { kVecU = 1, kVecDelta = 2, kVecZ = 4, kVecB = 8, kVecC = 16, kVecY = 32 };

// grid: (channel blocks, chunks, batch). FINAL=false is pass 1 of the chunked form (end states and dt sums of
// chunks 0..nc-2, no y); FINAL=true scans its chunk from its true entering state and writes y (and, in the
// last chunk, the final state). With one chunk only FINAL=true runs.
template <int NMAX, bool FINAL>
__global__ void __launch_bounds__(Cfg<NMAX>::kThreads, EP_SCAN_MIN_BLOCKS) scan_kernel(const ep_selective_scan_params p, const ChunkWork w,
                                                                  const unsigned vec) {
    using K = Cfg<NMAX>;
    constexpr int T = K::kTile, TR = K::kRow, CH = K::kChannels, LANES = K::kLanes, SPL = K::kSpl;
    constexpr int TH = K::kThreads, PR = T / 4;  // PR: packs per tile row
    constexpr int KU = (CH * PR + TH - 1) / TH, KB = (NMAX * PR + TH - 1) / TH;  // packs per thread
    constexpr int OWN = T / LANES;  // steps of y each lane finishes

    __shared__ __align__(16) float s_u[CH][TR];   // u, then y
    __shared__ __align__(16) float s_dt[CH][TR];  // delta, then dt
    __shared__ __align__(16) float s_du[CH][TR];  // dt * u
    __shared__ __align__(16) float s_z[FINAL ? CH : 1][TR];  // z, then silu(z)
    // B and C: state n in row (n % SPL) * LANES + n / SPL, so the LANES lanes of a channel read 8 distinct banks
    __shared__ __align__(16) float s_B[NMAX][TR];
    __shared__ __align__(16) float s_C[FINAL ? NMAX : 1][TR];
    __shared__ float s_bias[CH], s_D[CH];

    const int tid = threadIdx.x, lane = tid & 31;
    const int g = lane % LANES;                                 // lane within its channel
    const int r = (tid >> 5) * (32 / LANES) + lane / LANES;     // the channel within the block
    const int c = blockIdx.y;
    const int64_t b = blockIdx.z, dim = p.dim, L = p.seqlen;
    const int d0 = blockIdx.x * CH, d = d0 + r;
    const bool active = d < p.dim;
    const int N = p.dstate;
    const int64_t t_begin = static_cast<int64_t>(c) * w.chunk_len;
    const int64_t t_end = min(L, t_begin + w.chunk_len);
    const bool has_z = FINAL && p.z.data != nullptr;

    if (tid < CH) {  // read after the first tile's first barrier
        const bool ok = d0 + tid < p.dim;
        s_bias[tid] = ok ? ld_or(p.delta_bias, d0 + tid, 0.f) : 0.f;
        s_D[tid] = ok ? ld_or(p.D, d0 + tid, 0.f) : 0.f;
    }

    float a[SPL], h[SPL];
    const int64_t srow = (b * dim + d) * N;  // [batch, dim, dstate] row of this channel
    const int64_t bdn = static_cast<int64_t>(p.batch) * dim * N;
#pragma unroll
    for (int j = 0; j < SPL; ++j) {
        const int n = g * SPL + j;
        const bool ok = active && n < N;
        a[j] = ok ? ld(p.A.data, p.A.dtype, static_cast<int64_t>(d) * N + n) * kLog2e : 0.f;
        float h0 = 0.f;
        if (ok) {
            if (c == 0) h0 = ld_or(p.initial_state, srow + n, 0.f);
            else if (FINAL) h0 = w.hs[(c - 1) * bdn + srow + n];
        }
        h[j] = h0;
    }

    // this thread's packs: u/delta/z/y pack k is (row, 4*col) of the [CH, T] tile, B/C pack k of the [NMAX, T]
    uint4 pu[KU], pd[KU], pz[KU], pB[KB], pC[KB];
    auto count = [&](int64_t t) -> int { const int64_t n = t_end - t; return n <= 0 ? 0 : (n >= 4 ? 4 : static_cast<int>(n)); };
    auto prefetch = [&](int64_t t0) {
#pragma unroll
        for (int k = 0; k < KU; ++k) {
            const int pk = tid + k * TH, row = pk / PR, tt = (pk % PR) * 4;
            const int n = (pk < CH * PR && d0 + row < p.dim) ? count(t0 + tt) : 0;
            const int64_t gi = (b * dim + d0 + row) * L + t0 + tt;
            pu[k] = ld_raw4(p.u.data, p.u.dtype, gi, n, vec & kVecU);
            pd[k] = ld_raw4(p.delta.data, p.delta.dtype, gi, n, vec & kVecDelta);
            if (has_z) pz[k] = ld_raw4(p.z.data, p.z.dtype, gi, n, vec & kVecZ);
        }
#pragma unroll
        for (int k = 0; k < KB; ++k) {
            const int pk = tid + k * TH, row = pk / PR, tt = (pk % PR) * 4;
            const int n = (pk < NMAX * PR && row < N) ? count(t0 + tt) : 0;
            const int64_t gi = (b * N + row) * L + t0 + tt;
            pB[k] = ld_raw4(p.B.data, p.B.dtype, gi, n, vec & kVecB);
            if (FINAL) pC[k] = ld_raw4(p.C.data, p.C.dtype, gi, n, vec & kVecC);
        }
    };

    float dt_sum = 0.f;
    if (t_begin < t_end) prefetch(t_begin);
    for (int64_t t0 = t_begin; t0 < t_end; t0 += T) {
        // 1. the prefetched tile to shared memory (every slot is rewritten: zeros past the sequence or dim)
#pragma unroll
        for (int k = 0; k < KU; ++k) {
            const int pk = tid + k * TH, row = pk / PR, tt = (pk % PR) * 4;
            if (pk < CH * PR) {
                *reinterpret_cast<float4*>(&s_u[row][tt]) = unpack4(pu[k], p.u.dtype);
                *reinterpret_cast<float4*>(&s_dt[row][tt]) = unpack4(pd[k], p.delta.dtype);
                if (has_z) *reinterpret_cast<float4*>(&s_z[row][tt]) = unpack4(pz[k], p.z.dtype);
            }
        }
#pragma unroll
        for (int k = 0; k < KB; ++k) {
            const int pk = tid + k * TH, n = pk / PR, tt = (pk % PR) * 4;
            if (pk < NMAX * PR) {
                const int row = (n % SPL) * LANES + n / SPL;
                *reinterpret_cast<float4*>(&s_B[row][tt]) = unpack4(pB[k], p.B.dtype);
                if constexpr (FINAL) *reinterpret_cast<float4*>(&s_C[row][tt]) = unpack4(pC[k], p.C.dtype);
            }
        }
        __syncthreads();
        if (t0 + T < t_end) prefetch(t0 + T);  // in flight during the scan below

        // 2. per (channel, step): dt, dt * u, silu(z); steps past the end get dt = 0, so they leave h unchanged
#pragma unroll
        for (int i = tid; i < CH * T; i += TH) {
            const int row = i / T, tt = i % T;
            float dt = 0.f, du = 0.f;
            if (t0 + tt < t_end) {
                dt = s_dt[row][tt] + s_bias[row];
                if (p.delta_softplus) dt = softplus_fast(dt);
                du = dt * s_u[row][tt];
            }
            s_dt[row][tt] = dt;
            s_du[row][tt] = du;
            if (has_z) s_z[row][tt] = silu_fast(s_z[row][tt]);
        }
        __syncthreads();

        // 3. the scan: this lane's SPL states of channel r; yp[t] = its share of C_t . h_t
        float yp[FINAL ? T : 1];
#pragma unroll
        for (int t4 = 0; t4 < T; t4 += 4) {
            const float4 dt4 = *reinterpret_cast<const float4*>(&s_dt[r][t4]);
            const float4 du4 = *reinterpret_cast<const float4*>(&s_du[r][t4]);
            const float dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[4] = {du4.x, du4.y, du4.z, du4.w};
            float bs[SPL][4], cs[SPL][4];
#pragma unroll
            for (int j = 0; j < SPL; ++j) {
                const float4 bv = *reinterpret_cast<const float4*>(&s_B[j * LANES + g][t4]);
                bs[j][0] = bv.x, bs[j][1] = bv.y, bs[j][2] = bv.z, bs[j][3] = bv.w;
                if constexpr (FINAL) {
                    const float4 cv = *reinterpret_cast<const float4*>(&s_C[j * LANES + g][t4]);
                    cs[j][0] = cv.x, cs[j][1] = cv.y, cs[j][2] = cv.z, cs[j][3] = cv.w;
                }
            }
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                float acc = 0.f;
#pragma unroll
                for (int j = 0; j < SPL; ++j) {
                    h[j] = fmaf(ex2(dts[k] * a[j]), h[j], dus[k] * bs[j][k]);
                    if constexpr (FINAL) acc = fmaf(h[j], cs[j][k], acc);
                }
                if constexpr (FINAL) yp[t4 + k] = acc;
                else dt_sum += dts[k];
            }
        }

        // 4. sum over the channel's lanes; lane g gets steps [g * OWN, (g+1) * OWN) and overwrites u with y
        if constexpr (FINAL) {
            reduce_scatter<LANES / 2, T>(yp, g);
#pragma unroll
            for (int i = 0; i < OWN; ++i) {
                const int tt = g * OWN + i;
                float y = yp[i] + s_D[r] * s_u[r][tt];
                if (has_z) y *= s_z[r][tt];
                s_u[r][tt] = y;
            }
        }
        __syncthreads();

        // 5. y out, by the packs this thread loaded (so its next tile's stores cannot overwrite y unread)
        if constexpr (FINAL) {
#pragma unroll
            for (int k = 0; k < KU; ++k) {
                const int pk = tid + k * TH, row = pk / PR, tt = (pk % PR) * 4;
                const int n = (pk < CH * PR && d0 + row < p.dim) ? count(t0 + tt) : 0;
                if (n > 0)
                    st4(p.y.data, p.y.dtype, (b * dim + d0 + row) * L + t0 + tt,
                        *reinterpret_cast<const float4*>(&s_u[row][tt]), n, vec & kVecY);
            }
        }
    }

    if (!active) return;
#pragma unroll
    for (int j = 0; j < SPL; ++j) {
        const int n = g * SPL + j;
        if (n >= N) continue;
        if (!FINAL) w.hs[c * bdn + srow + n] = h[j];
        else if (c == w.nchunks - 1) st(p.final_state.data, p.final_state.dtype, srow + n, h[j]);
    }
    if (!FINAL && g == 0) w.S[(static_cast<int64_t>(c) * p.batch + b) * dim + d] = dt_sum;
}

// Whether each tensor's rows can be read as aligned 4-element packs.
unsigned vec_mask(const ep_selective_scan_params& p) {
    auto ok = [&](const void* ptr, int dt) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
        return p.seqlen % 4 == 0 && a % (dt == EP_F32 ? 16 : 8) == 0;
    };
    unsigned m = 0;
    if (ok(p.u.data, p.u.dtype)) m |= kVecU;
    if (ok(p.delta.data, p.delta.dtype)) m |= kVecDelta;
    if (!p.z.data || ok(p.z.data, p.z.dtype)) m |= kVecZ;
    if (ok(p.B.data, p.B.dtype)) m |= kVecB;
    if (ok(p.C.data, p.C.dtype)) m |= kVecC;
    if (ok(p.y.data, p.y.dtype)) m |= kVecY;
    return m;
}

// One pass unless its warps leave the SMs short (then chunks, up to EP_SCAN_CHUNK_TARGET warps per SM).
template <int NMAX>
ChunkPlan plan_for(const ep_selective_scan_params& p) {
    using K = Cfg<NMAX>;
    const int64_t sms = std::max(1, sm_count());
    const int64_t warps = ceil_div(p.dim, K::kChannels) * p.batch * (K::kThreads / 32);
    int64_t nc = 1;
    if (warps < EP_SCAN_CHUNK_WARPS * sms) {
        nc = std::min<int64_t>(ceil_div(EP_SCAN_CHUNK_TARGET * sms, warps), kMaxChunks);
        nc = std::max<int64_t>(1, std::min<int64_t>(nc, ceil_div(p.seqlen, kMinChunkLen)));
    }
    ChunkPlan plan;
    plan.chunk_len = static_cast<int>(std::max<int64_t>(K::kTile, ceil_div(ceil_div(p.seqlen, nc), K::kTile) * K::kTile));
    // rounding the chunk up to whole tiles can only lower the count: the workspace, sized from nc, stays
    // monotone in seqlen (plugins size it from the max shape)
    plan.nchunks = static_cast<int>(std::max<int64_t>(1, ceil_div(p.seqlen, plan.chunk_len)));
    plan.nchunks_bound = static_cast<int>(nc);
    return plan;
}

ChunkPlan plan(const ep_selective_scan_params& p) {
    if (p.dstate <= 16) return plan_for<16>(p);
    if (p.dstate <= 32) return plan_for<32>(p);
    return plan_for<64>(p);
}

template <int NMAX>
int run(const ep_selective_scan_params& p, const ChunkWork& w, cudaStream_t stream) {
    using K = Cfg<NMAX>;
    const unsigned dblocks = static_cast<unsigned>(ceil_div(p.dim, K::kChannels));
    const unsigned vec = vec_mask(p);
    if (w.nchunks > 1) {
        scan_kernel<NMAX, false><<<dim3(dblocks, w.nchunks - 1, p.batch), K::kThreads, 0, stream>>>(p, w, vec);
        if (int e = launch_status()) return e;
        // A[d, n]: row stride dstate, element stride 1
        if (int e = combine_chunks(w.hs, w.S, p.A, p.dstate, 1, w.nchunks, p.batch, p.dim, p.dstate, stream))
            return e;
    }
    scan_kernel<NMAX, true><<<dim3(dblocks, w.nchunks, p.batch), K::kThreads, 0, stream>>>(p, w, vec);
    return launch_status();
}

}  // namespace
}  // namespace ep

extern "C" size_t edgeports_selective_scan_workspace(const ep_selective_scan_params* p) {
    if (!p || p->batch <= 0 || p->dim <= 0 || p->dstate <= 0 || p->dstate > 64 || p->seqlen <= 0) return 0;
    // the most that any batch up to p->batch needs: an engine sizes the workspace from its profile's largest
    // shapes, and a smaller batch can need chunks (a workspace) where the largest fills the GPU in one pass
    size_t most = 0;
    ep_selective_scan_params q = *p;
    for (q.batch = 1; q.batch <= p->batch; ++q.batch)
        most = std::max(most, ep::chunk_workspace_bytes(ep::plan(q), static_cast<int64_t>(q.batch) * q.dim, q.dstate));
    return most;
}

extern "C" int edgeports_selective_scan(const ep_selective_scan_params* p, void* workspace, size_t workspace_bytes,
                                        void* stream) {
    using namespace ep;
    if (!p || p->batch <= 0 || p->dim <= 0 || p->dstate <= 0 || p->seqlen < 0 || p->batch > 65535) return EP_ERR_ARGS;
    if (!valid_in(p->u, true) || !valid_in(p->delta, true) || !valid_in(p->A, true) || !valid_in(p->B, true) ||
        !valid_in(p->C, true) || !valid_in(p->D, false) || !valid_in(p->z, false) ||
        !valid_in(p->delta_bias, false) || !valid_in(p->initial_state, false) || !valid_out(p->y) ||
        !valid_out(p->final_state))
        return EP_ERR_ARGS;
    if (p->dstate > 64) return EP_ERR_UNSUPPORTED;
    const ChunkPlan pl = plan(*p);
    const size_t need = edgeports_selective_scan_workspace(p);
    if (need > 0 && (!workspace || workspace_bytes < need)) return EP_ERR_WORKSPACE;
    const ChunkWork w = chunk_work(pl, static_cast<int64_t>(p->batch) * p->dim, p->dstate, workspace);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (p->dstate <= 16) return run<16>(*p, w, s);
    if (p->dstate <= 32) return run<32>(*p, w, s);
    return run<64>(*p, w, s);
}
