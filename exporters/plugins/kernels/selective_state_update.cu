// One decode step of the SSM (Mamba1 and Mamba2): memory-bound, so a row (b, h, p) of the state is
// read and written by `tpr` adjacent lanes along dstate (coalesced), y reduced over those lanes.
#include <algorithm>

#include "common.cuh"

namespace ep {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) ssu_kernel(ep_ssu_params p, int tpr) {
    const int rows_per_block = kThreads / tpr;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / tpr;  // (b, h, p)
    const int j = threadIdx.x % tpr;
    const int H = p.nheads, P = p.headdim, N = p.dstate;
    const int64_t rows = static_cast<int64_t>(p.batch) * H * P;
    const bool active = row < rows;
    float acc = 0.f, xv = 0.f;
    int64_t h = 0, pp = 0;
    if (active) {
        pp = row % P;
        h = (row / P) % H;
        const int64_t b = row / (static_cast<int64_t>(P) * H);
        const int64_t g = h / (H / p.ngroups);
        xv = ld(p.x.data, p.x.dtype, row);
        float dt = ld(p.dt.data, p.dt.dtype, row) +
                   ld_or(p.dt_bias, h * p.dt_bias_stride[0] + pp * p.dt_bias_stride[1], 0.f);
        if (p.dt_softplus) dt = softplus(dt);
        const float xdt = xv * dt;
        const int64_t a_row = h * p.a_stride[0] + pp * p.a_stride[1];
        const int64_t bc = (b * p.ngroups + g) * N;
        for (int n = j; n < N; n += tpr) {
            const float a = ld(p.A.data, p.A.dtype, a_row + n * p.a_stride[2]);
            float s = ld(p.state.data, p.state.dtype, row * N + n);
            s = expf(dt * a) * s + xdt * ld(p.B.data, p.B.dtype, bc + n);
            st(p.new_state.data, p.new_state.dtype, row * N + n, s);
            acc += s * ld(p.C.data, p.C.dtype, bc + n);
        }
    }
    acc = group_sum(acc, tpr);  // every lane takes part, inactive ones with 0
    if (active && j == 0) {
        float y = acc + xv * ld_or(p.D, h * p.d_stride[0] + pp * p.d_stride[1], 0.f);
        if (p.z.data) y *= silu(ld(p.z.data, p.z.dtype, row));
        st(p.y.data, p.y.dtype, row, y);
    }
}

}  // namespace
}  // namespace ep

extern "C" int edgeports_selective_state_update(const ep_ssu_params* p, void* stream) {
    using namespace ep;
    if (!p || p->batch <= 0 || p->nheads <= 0 || p->headdim <= 0 || p->dstate <= 0 || p->ngroups <= 0 ||
        p->nheads % p->ngroups != 0)
        return EP_ERR_ARGS;
    if (!valid_in(p->state, true) || !valid_in(p->x, true) || !valid_in(p->dt, true) || !valid_in(p->A, true) ||
        !valid_in(p->B, true) || !valid_in(p->C, true) || !valid_in(p->D, false) || !valid_in(p->z, false) ||
        !valid_in(p->dt_bias, false) || !valid_out(p->y) || !valid_out(p->new_state))
        return EP_ERR_ARGS;
    const int tpr = std::min(32, next_pow2(p->dstate));
    const int64_t rows = static_cast<int64_t>(p->batch) * p->nheads * p->headdim;
    const int64_t blocks = ceil_div(rows, kThreads / tpr);
    if (blocks > 0x7fffffff) return EP_ERR_UNSUPPORTED;
    ssu_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(*p, tpr);
    return launch_status();
}
