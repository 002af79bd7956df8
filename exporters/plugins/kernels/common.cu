// Host planning shared by the scans, the chunk-state combine kernel, and the library's version/error entry points.
#include <algorithm>

#include "common.cuh"

namespace ep {

namespace {
constexpr int kMaxDevices = 64;

// Chunking trades a second scan of all but the last chunk for parallelism along the sequence,
// so it only kicks in when one pass leaves the GPU short of warps.
// The scans are latency-bound per step, so chunks pay off up to a good share of the SM's warp slots
// (H100, Mamba-2.8b at 16k: 16 warps per SM ran the scan in 3.8 ms).
constexpr int kWarpsPerSmTarget = 48;
constexpr int kWarpsPerSmEnough = 8;
constexpr int kMinChunkLen = 128;
constexpr int kMaxChunks = 64;

__global__ void combine_kernel(float* __restrict__ hs, const float* __restrict__ S, ep_in A, int64_t a_rs,
                               int64_t a_es, int nchunks, int64_t batch, int64_t R, int64_t E) {
    const int64_t per_chunk = batch * R * E;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= per_chunk) return;
    const int64_t e = i % E;
    const int64_t br = i / E;  // b * R + r
    const int64_t r = br % R;
    const float a = ld(A.data, A.dtype, r * a_rs + e * a_es);
    float h = hs[i];  // chunk 0 already started from the true initial state
    for (int c = 1; c < nchunks - 1; ++c) {
        const int64_t j = c * per_chunk + i;
        h = expf(a * S[c * batch * R + br]) * h + hs[j];
        hs[j] = h;
    }
}
}  // namespace

namespace {
// Attribute A of the current device, cached per device (every entry point asks again; 0 if unknown).
template <cudaDeviceAttr A>
int device_attr() {
    static int cache[kMaxDevices] = {0};
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 0;
    if (dev < kMaxDevices && cache[dev] > 0) return cache[dev];
    int v = 0;
    if (cudaDeviceGetAttribute(&v, A, dev) != cudaSuccess) return 0;
    if (dev < kMaxDevices) cache[dev] = v;
    return v;
}
}  // namespace

int sm_count() { return device_attr<cudaDevAttrMultiProcessorCount>(); }
int compute_major() { return device_attr<cudaDevAttrComputeCapabilityMajor>(); }
int max_smem_optin() { return device_attr<cudaDevAttrMaxSharedMemoryPerBlockOptin>(); }

ChunkPlan plan_chunks(int64_t base_blocks, int warps_per_block, int64_t seqlen, int tile) {
    const int64_t sms = std::max(1, sm_count());
    const int64_t warps = std::max<int64_t>(1, base_blocks * warps_per_block);
    int64_t nc = 1;
    if (warps < kWarpsPerSmEnough * sms) {
        nc = ceil_div(kWarpsPerSmTarget * sms, warps);
        nc = std::min<int64_t>(nc, kMaxChunks);
        nc = std::min<int64_t>(nc, ceil_div(seqlen, kMinChunkLen));
        nc = std::max<int64_t>(nc, 1);
    }
    ChunkPlan plan;
    plan.chunk_len = static_cast<int>(std::max<int64_t>(tile, ceil_div(ceil_div(seqlen, nc), tile) * tile));
    // Rounding the chunk up to whole tiles can only lower the count, so sizing the workspace from
    // the planned count keeps it monotone in seqlen (plugins size it from the max shape).
    plan.nchunks = static_cast<int>(std::max<int64_t>(1, ceil_div(seqlen, plan.chunk_len)));
    plan.nchunks_bound = static_cast<int>(nc);
    return plan;
}

namespace {
size_t states_bytes(const ChunkPlan& plan, int64_t rows, int64_t per_row) {
    const int64_t n = plan.nchunks_bound - 1;
    return n <= 0 ? 0 : ((static_cast<size_t>(n * rows * per_row) * sizeof(float) + 255) / 256) * 256;
}
}  // namespace

size_t chunk_workspace_bytes(const ChunkPlan& plan, int64_t rows, int64_t per_row) {
    const int64_t n = plan.nchunks_bound - 1;
    return n <= 0 ? 0 : states_bytes(plan, rows, per_row) + static_cast<size_t>(n * rows) * sizeof(float);
}

ChunkWork chunk_work(const ChunkPlan& plan, int64_t rows, int64_t per_row, void* workspace) {
    ChunkWork w;
    w.hs = static_cast<float*>(workspace);
    w.S = workspace ? reinterpret_cast<float*>(static_cast<char*>(workspace) + states_bytes(plan, rows, per_row))
                    : nullptr;
    w.nchunks = plan.nchunks;
    w.chunk_len = plan.chunk_len;
    return w;
}

int combine_chunks(float* hs, const float* S, ep_in A, int64_t a_rs, int64_t a_es, int nchunks, int64_t batch,
                   int64_t R, int64_t E, cudaStream_t stream) {
    if (nchunks <= 2) return EP_OK;  // chunk 0's end state is already exact
    const int64_t n = batch * R * E;
    const int threads = 256;
    combine_kernel<<<static_cast<unsigned>(ceil_div(n, threads)), threads, 0, stream>>>(hs, S, A, a_rs, a_es,
                                                                                         nchunks, batch, R, E);
    return launch_status();
}

}  // namespace ep

extern "C" int edgeports_ssm_abi_version(void) { return EDGEPORTS_SSM_ABI_VERSION; }

extern "C" const char* edgeports_ssm_error_string(int code) {
    switch (code) {
        case EP_OK: return "ok";
        case EP_ERR_ARGS: return "invalid arguments (a required tensor is missing, a dtype is unknown or a size is out of range)";
        case EP_ERR_WORKSPACE: return "workspace too small";
        case EP_ERR_UNSUPPORTED: return "unsupported size (see the limits in edgeports_ssm.h)";
        default: return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error";
    }
}
