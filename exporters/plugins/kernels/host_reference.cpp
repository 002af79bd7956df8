// The host reference of the five SSM ops: plain C++ loops over host memory, float32 arithmetic, with the
// params and signatures of the CUDA entry points (edgeports_ssm.h: edgeports_host_*). ONNX Runtime's CPU
// execution provider runs the ai.edgeports nodes through these (ort/ssm_ort_ops.cpp), and the tests hold
// them to the Python reference (edgeports.kernels.impl_ref), whose equations they follow line by line.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "edgeports_ssm.h"

namespace {

float halfToFloat(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        int e = -1;
        do {
            ++e;
            mant <<= 1;
        } while (!(mant & 0x400u));
        bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t floatToHalf(float f) {  // round to nearest even, as __float2half_rn
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u);
    if (x >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504
    if (x < 0x38800000u) {  // subnormal or zero in half
        if (x < 0x33000000u) return sign;
        const uint32_t shift = 113 - (x >> 23) + 13;  // 126 - e with the implicit bit kept
        const uint32_t mant = (x & 0x7fffffu) | 0x800000u;
        uint32_t h = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return sign | static_cast<uint16_t>(h);
    }
    uint32_t h = ((x >> 23) - 112) << 10 | ((x >> 13) & 0x3ffu);
    const uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return sign | static_cast<uint16_t>(h);
}

float bf16ToFloat(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t floatToBf16(float f) {  // round to nearest even
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
}

bool validDtype(int32_t d) { return d == EP_F32 || d == EP_F16 || d == EP_BF16; }
bool validIn(ep_in const& t, bool required) { return t.data ? validDtype(t.dtype) : !required; }
bool validOut(ep_out const& t) { return t.data && validDtype(t.dtype); }

float ld(ep_in const& t, int64_t i) {
    if (t.dtype == EP_F32) return static_cast<float const*>(t.data)[i];
    const uint16_t v = static_cast<uint16_t const*>(t.data)[i];
    return t.dtype == EP_F16 ? halfToFloat(v) : bf16ToFloat(v);
}

float ldOr(ep_in const& t, int64_t i, float dflt) { return t.data ? ld(t, i) : dflt; }

void st(ep_out const& t, int64_t i, float v) {
    if (t.dtype == EP_F32) static_cast<float*>(t.data)[i] = v;
    else static_cast<uint16_t*>(t.data)[i] = t.dtype == EP_F16 ? floatToHalf(v) : floatToBf16(v);
}

// A value as the tensor's dtype would hold it (the reference rounds the padded conv input to x's dtype).
float roundTo(int32_t dtype, float v) {
    if (dtype == EP_F16) return halfToFloat(floatToHalf(v));
    if (dtype == EP_BF16) return bf16ToFloat(floatToBf16(v));
    return v;
}

float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }  // torch's threshold
float silu(float x) { return x / (1.f + std::exp(-x)); }

}  // namespace

extern "C" size_t edgeports_host_selective_scan_workspace(const ep_selective_scan_params*) { return 0; }
extern "C" size_t edgeports_host_ssd_chunk_scan_workspace(const ep_ssd_params*) { return 0; }

// u, delta, z [Bt, D, L]; A [D, N]; B, C [Bt, N, L]; D, delta_bias [D]; h [Bt, D, N]
extern "C" int edgeports_host_selective_scan(const ep_selective_scan_params* p, void*, size_t, void*) {
    if (!p || p->batch <= 0 || p->dim <= 0 || p->dstate <= 0 || p->seqlen < 0) return EP_ERR_ARGS;
    if (!validIn(p->u, true) || !validIn(p->delta, true) || !validIn(p->A, true) || !validIn(p->B, true) ||
        !validIn(p->C, true) || !validIn(p->D, false) || !validIn(p->z, false) || !validIn(p->delta_bias, false) ||
        !validIn(p->initial_state, false) || !validOut(p->y) || !validOut(p->final_state))
        return EP_ERR_ARGS;
    const int64_t D = p->dim, N = p->dstate, L = p->seqlen;
    std::vector<float> h(static_cast<size_t>(N));
    for (int64_t b = 0; b < p->batch; ++b) {
        for (int64_t d = 0; d < D; ++d) {
            const int64_t row = (b * D + d) * N;
            for (int64_t n = 0; n < N; ++n) h[n] = ldOr(p->initial_state, row + n, 0.f);
            const float bias = ldOr(p->delta_bias, d, 0.f), Dd = ldOr(p->D, d, 0.f);
            for (int64_t t = 0; t < L; ++t) {
                const int64_t i = (b * D + d) * L + t;
                float dt = ld(p->delta, i) + bias;
                if (p->delta_softplus) dt = softplus(dt);
                const float u = ld(p->u, i);
                float y = 0.f;
                for (int64_t n = 0; n < N; ++n) {
                    const int64_t bc = (b * N + n) * L + t;
                    h[n] = std::exp(dt * ld(p->A, d * N + n)) * h[n] + dt * ld(p->B, bc) * u;
                    y += h[n] * ld(p->C, bc);
                }
                y += Dd * u;
                if (p->z.data) y *= silu(ld(p->z, i));
                st(p->y, i, y);
            }
            for (int64_t n = 0; n < N; ++n) st(p->final_state, row + n, h[n]);
        }
    }
    return EP_OK;
}

// x, z [Bt, L, H, P]; dt [Bt, L, H]; A, D, dt_bias [H]; B, C [Bt, L, G, N]; h [Bt, H, P, N]
extern "C" int edgeports_host_ssd_chunk_scan(const ep_ssd_params* p, void*, size_t, void*) {
    if (!p || p->batch <= 0 || p->seqlen < 0 || p->nheads <= 0 || p->headdim <= 0 || p->dstate <= 0 ||
        p->ngroups <= 0 || p->nheads % p->ngroups != 0)
        return EP_ERR_ARGS;
    if (!validIn(p->x, true) || !validIn(p->dt, true) || !validIn(p->A, true) || !validIn(p->B, true) ||
        !validIn(p->C, true) || !validIn(p->D, false) || !validIn(p->z, false) || !validIn(p->dt_bias, false) ||
        !validIn(p->initial_state, false) || !validOut(p->y) || !validOut(p->final_state))
        return EP_ERR_ARGS;
    const int64_t L = p->seqlen, H = p->nheads, P = p->headdim, G = p->ngroups, N = p->dstate;
    std::vector<float> h(static_cast<size_t>(P * N));
    for (int64_t b = 0; b < p->batch; ++b) {
        for (int64_t hh = 0; hh < H; ++hh) {
            const int64_t g = hh / (H / G), srow = (b * H + hh) * P * N;
            for (int64_t k = 0; k < P * N; ++k) h[k] = ldOr(p->initial_state, srow + k, 0.f);
            const float A = ld(p->A, hh), Dh = ldOr(p->D, hh, 0.f), bias = ldOr(p->dt_bias, hh, 0.f);
            for (int64_t t = 0; t < L; ++t) {
                float dt = ld(p->dt, (b * L + t) * H + hh) + bias;
                if (p->dt_softplus) dt = softplus(dt);
                dt = std::fmin(std::fmax(dt, p->dt_min), p->dt_max);
                const float dA = std::exp(dt * A);
                const int64_t bc = ((b * L + t) * G + g) * N;
                for (int64_t q = 0; q < P; ++q) {
                    const int64_t xi = ((b * L + t) * H + hh) * P + q;
                    const float x = ld(p->x, xi);
                    float y = 0.f;
                    for (int64_t n = 0; n < N; ++n) {
                        float& s = h[q * N + n];
                        s = dA * s + dt * x * ld(p->B, bc + n);
                        y += s * ld(p->C, bc + n);
                    }
                    y += Dh * x;
                    if (p->z.data) y *= silu(ld(p->z, xi));
                    st(p->y, xi, y);
                }
            }
            for (int64_t k = 0; k < P * N; ++k) st(p->final_state, srow + k, h[k]);
        }
    }
    return EP_OK;
}

// state [Bt, H, P, N]; x, dt, z [Bt, H, P]; A [H, P, N] and D, dt_bias [H, P] through their strides; B, C [Bt, G, N]
extern "C" int edgeports_host_selective_state_update(const ep_ssu_params* p, void*) {
    if (!p || p->batch <= 0 || p->nheads <= 0 || p->headdim <= 0 || p->dstate <= 0 || p->ngroups <= 0 ||
        p->nheads % p->ngroups != 0)
        return EP_ERR_ARGS;
    if (!validIn(p->state, true) || !validIn(p->x, true) || !validIn(p->dt, true) || !validIn(p->A, true) ||
        !validIn(p->B, true) || !validIn(p->C, true) || !validIn(p->D, false) || !validIn(p->z, false) ||
        !validIn(p->dt_bias, false) || !validOut(p->y) || !validOut(p->new_state))
        return EP_ERR_ARGS;
    const int64_t H = p->nheads, P = p->headdim, N = p->dstate, G = p->ngroups;
    for (int64_t b = 0; b < p->batch; ++b) {
        for (int64_t hh = 0; hh < H; ++hh) {
            const int64_t g = hh / (H / G);
            for (int64_t q = 0; q < P; ++q) {
                const int64_t xi = (b * H + hh) * P + q;
                const float bias = ldOr(p->dt_bias, hh * p->dt_bias_stride[0] + q * p->dt_bias_stride[1], 0.f);
                float dt = ld(p->dt, xi) + bias;
                if (p->dt_softplus) dt = softplus(dt);
                const float x = ld(p->x, xi);
                float y = 0.f;
                for (int64_t n = 0; n < N; ++n) {
                    const int64_t si = xi * N + n, bc = (b * G + g) * N + n;
                    const float A = ld(p->A, hh * p->a_stride[0] + q * p->a_stride[1] + n * p->a_stride[2]);
                    const float s = ld(p->state, si) * std::exp(dt * A) + dt * ld(p->B, bc) * x;
                    st(p->new_state, si, s);
                    y += s * ld(p->C, bc);
                }
                y += ldOr(p->D, hh * p->d_stride[0] + q * p->d_stride[1], 0.f) * x;
                if (p->z.data) y *= silu(ld(p->z, xi));
                st(p->y, xi, y);
            }
        }
    }
    return EP_OK;
}

namespace {

// The conv over one row of [initial (W-1), x (L)] values; writes y and the last W-1 values.
void convRow(ep_in const& w, ep_in const& bias, int32_t activation, int64_t d, int64_t W, std::vector<float> const& pad,
             int64_t L, ep_out const& y, int64_t yBase, ep_out const& state, int64_t stateBase) {
    const float bd = ldOr(bias, d, 0.f);
    for (int64_t t = 0; t < L; ++t) {
        float acc = bd;
        for (int64_t k = 0; k < W; ++k) acc += ld(w, d * W + k) * pad[t + k];
        st(y, yBase + t, activation == EP_ACT_SILU ? silu(acc) : acc);
    }
    for (int64_t k = 0; k < W - 1; ++k) st(state, stateBase + k, pad[L + k]);
}

bool validConv(int64_t batch, int64_t dim, int64_t width, int32_t activation) {
    return batch > 0 && dim > 0 && width >= 1 && (activation == EP_ACT_NONE || activation == EP_ACT_SILU);
}

}  // namespace

// x [Bt, D, L]; weight [D, W]; bias [D]; initial_state [Bt, D, W-1]
extern "C" int edgeports_host_causal_conv1d(const ep_conv_params* p, void*) {
    if (!p || !validConv(p->batch, p->dim, p->width, p->activation) || p->seqlen < 0) return EP_ERR_ARGS;
    if (!validIn(p->x, true) || !validIn(p->weight, true) || !validIn(p->bias, false) ||
        !validIn(p->initial_state, false) || !validOut(p->y) || !validOut(p->final_state))
        return EP_ERR_ARGS;
    const int64_t D = p->dim, W = p->width, L = p->seqlen;
    std::vector<float> pad(static_cast<size_t>(W - 1 + L));
    for (int64_t b = 0; b < p->batch; ++b) {
        for (int64_t d = 0; d < D; ++d) {
            for (int64_t k = 0; k < W - 1; ++k)
                pad[k] = roundTo(p->x.dtype, ldOr(p->initial_state, (b * D + d) * (W - 1) + k, 0.f));
            for (int64_t t = 0; t < L; ++t) pad[W - 1 + t] = ld(p->x, (b * D + d) * L + t);
            convRow(p->weight, p->bias, p->activation, d, W, pad, L, p->y, (b * D + d) * L, p->final_state,
                    (b * D + d) * (W - 1));
        }
    }
    return EP_OK;
}

// x [Bt, D]; conv_state [Bt, D, W-1]; weight [D, W]; bias [D]
extern "C" int edgeports_host_causal_conv1d_update(const ep_conv_update_params* p, void*) {
    if (!p || !validConv(p->batch, p->dim, p->width, p->activation)) return EP_ERR_ARGS;
    if (!validIn(p->x, true) || !validIn(p->conv_state, true) || !validIn(p->weight, true) ||
        !validIn(p->bias, false) || !validOut(p->y) || !validOut(p->new_conv_state))
        return EP_ERR_ARGS;
    const int64_t D = p->dim, W = p->width;
    std::vector<float> pad(static_cast<size_t>(W));
    for (int64_t b = 0; b < p->batch; ++b) {
        for (int64_t d = 0; d < D; ++d) {
            for (int64_t k = 0; k < W - 1; ++k) pad[k] = roundTo(p->x.dtype, ld(p->conv_state, (b * D + d) * (W - 1) + k));
            pad[W - 1] = ld(p->x, b * D + d);
            convRow(p->weight, p->bias, p->activation, d, W, pad, 1, p->y, b * D + d, p->new_conv_state,
                    (b * D + d) * (W - 1));
        }
    }
    return EP_OK;
}
