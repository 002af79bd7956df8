// The ai.edgeports ops as the hosts see them: what each op's inputs, outputs and attributes are, and how
// a node's tensors become the params of an edgeports_ssm.h entry point. Shared by the TensorRT plugins
// (trt/) and the ONNX Runtime custom-op library (ort/), so both map a node the same way.
//
// A host hands tensors in contract slot order (notes: KERNELS.md; exporters/onnx_custom.py's NodeSpec):
// slot i of an op is its i-th contract input, absent optional ones marked `present = false`. Header-only,
// C++17, no TensorRT, ONNX Runtime or CUDA types.
#ifndef EDGEPORTS_SSM_OPS_HPP
#define EDGEPORTS_SSM_OPS_HPP

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "edgeports_ssm.h"

namespace edgeports {

enum class Op : int32_t { kSelectiveScan = 0, kSsdChunkScan, kSelectiveStateUpdate, kCausalConv1d, kCausalConv1dUpdate };
constexpr int32_t kNbOps = 5;
constexpr int32_t kMaxSlots = 9;
constexpr int32_t kMaxRank = 4;

// What each attribute means; hosts map their own wire types onto these.
enum class Attr { kSoftplus, kChunkSize, kDtMin, kDtMax, kActivation, kPresent };

struct OpSpec {
    char const* name;
    int32_t required;       // leading inputs that are always there
    int32_t optional;       // trailing optional inputs, in contract order
    int32_t primary;        // input whose type y takes
    int32_t stateTypeFrom;  // input whose type the state output takes; -1 = float32
    std::vector<int32_t> float32Inputs;  // contract slots pinned to float32 (the contract's f32 tensors)
    std::vector<std::pair<Attr, char const*>> attrs;  // `present` is a TensorRT parser attribute (exporters/trt.py)
};

inline OpSpec const& spec(Op op) {
    static OpSpec const specs[] = {
        // u, delta, A, B, C | D, z, delta_bias, initial_state
        {"SelectiveScan", 5, 4, 0, -1, {2, 5, 7, 8}, {{Attr::kSoftplus, "delta_softplus"}, {Attr::kPresent, "present"}}},
        // x, dt, A, B, C | D, z, dt_bias, initial_state
        {"SsdChunkScan", 5, 4, 0, -1, {2, 8},
         {{Attr::kChunkSize, "chunk_size"}, {Attr::kSoftplus, "dt_softplus"}, {Attr::kDtMin, "dt_min"},
          {Attr::kDtMax, "dt_max"}, {Attr::kPresent, "present"}}},
        // state, x, dt, A, B, C | D, z, dt_bias
        {"SelectiveStateUpdate", 6, 3, 1, -1, {0, 3}, {{Attr::kSoftplus, "dt_softplus"}, {Attr::kPresent, "present"}}},
        // x, weight | bias, initial_state
        {"CausalConv1d", 2, 2, 0, 0, {}, {{Attr::kActivation, "activation"}, {Attr::kPresent, "present"}}},
        // x, conv_state, weight | bias
        {"CausalConv1dUpdate", 3, 1, 0, 1, {}, {{Attr::kActivation, "activation"}, {Attr::kPresent, "present"}}},
    };
    return specs[static_cast<int32_t>(op)];
}

inline int32_t nbSlots(Op op) { return spec(op).required + spec(op).optional; }

struct Attrs {
    int32_t softplus = 0;
    int32_t chunkSize = 256;  // kept for the round trip; the kernels choose their own blocking
    float dtMin = 0.f;
    float dtMax = INFINITY;
    int32_t activation = EP_ACT_NONE;
    int32_t present = -1;  // TensorRT only: bit i = optional input i is given (-1: the leading ones)
};

// "" / "none" / "silu" -> EP_ACT_*; anything else is an error naming the value.
inline int32_t parseActivation(std::string const& s) {
    if (s.empty() || s == "none") return EP_ACT_NONE;
    if (s == "silu") return EP_ACT_SILU;
    throw std::invalid_argument("activation must be \"\" or \"silu\", got \"" + s + "\"");
}

// One input of a node in contract slot order. `data` may be NULL for a present tensor while only
// sizes are asked (workspace queries at build time).
struct Slot {
    bool present = false;
    void const* data = nullptr;
    int32_t dtype = EP_F32;
    int32_t rank = 0;
    int64_t dims[kMaxRank] = {0, 0, 0, 0};
};

struct OutSlot {
    void* data = nullptr;
    int32_t dtype = EP_F32;
};

// The kernel entry points a host calls: the CUDA ones or the host reference (edgeports_ssm.h).
struct Kernels {
    size_t (*selectiveScanWorkspace)(ep_selective_scan_params const*);
    int (*selectiveScan)(ep_selective_scan_params const*, void*, size_t, void*);
    size_t (*ssdWorkspace)(ep_ssd_params const*);
    int (*ssd)(ep_ssd_params const*, void*, size_t, void*);
    int (*stateUpdate)(ep_ssu_params const*, void*);
    int (*conv)(ep_conv_params const*, void*);
    int (*convUpdate)(ep_conv_update_params const*, void*);
};

// Only hosts that link the .cu files may call this (the functions are theirs).
inline Kernels cudaKernels() {
    return {edgeports_selective_scan_workspace, edgeports_selective_scan, edgeports_ssd_chunk_scan_workspace,
            edgeports_ssd_chunk_scan, edgeports_selective_state_update, edgeports_causal_conv1d,
            edgeports_causal_conv1d_update};
}

inline Kernels hostKernels() {
    return {edgeports_host_selective_scan_workspace, edgeports_host_selective_scan,
            edgeports_host_ssd_chunk_scan_workspace, edgeports_host_ssd_chunk_scan,
            edgeports_host_selective_state_update, edgeports_host_causal_conv1d, edgeports_host_causal_conv1d_update};
}

namespace detail {

// Workspace queries need no data, only presence; the kernels never see this pointer.
inline void const* placeholder() { return reinterpret_cast<void const*>(16); }

inline int32_t dim(Slot const* in, int32_t slot, int32_t d) { return static_cast<int32_t>(in[slot].dims[d]); }

inline ep_in input(Slot const& s) {
    if (!s.present) return ep_in{nullptr, 0};
    return ep_in{s.data ? s.data : placeholder(), s.dtype};
}

inline void inputs(ep_in** fields, int32_t n, Slot const* in) {
    for (int32_t i = 0; i < n; ++i) *fields[i] = input(in[i]);
}

inline void outputs(ep_out* y, ep_out* state, OutSlot const* out) {
    if (out == nullptr) return;
    *y = ep_out{out[0].data, out[0].dtype};
    *state = ep_out{out[1].data, out[1].dtype};
}

// Element strides of a slot read as `rank` dims, right-aligned, 0 on broadcast (size-1 or missing) dims.
inline void broadcastStrides(Slot const& s, int32_t rank, int64_t* strides) {
    for (int32_t k = 0; k < rank; ++k) strides[k] = 0;
    if (!s.present) return;
    int64_t step = 1;
    for (int32_t k = s.rank - 1, t = rank - 1; k >= 0 && t >= 0; --k, --t) {
        strides[t] = s.dims[k] == 1 ? 0 : step;
        step *= s.dims[k];
    }
}

inline ep_selective_scan_params scanParams(Slot const* in, OutSlot const* out, Attrs const& a) {
    ep_selective_scan_params p{};
    p.batch = dim(in, 0, 0);  // u [Bt, D, L], A [D, N]
    p.dim = dim(in, 0, 1);
    p.seqlen = dim(in, 0, 2);
    p.dstate = dim(in, 2, 1);
    p.delta_softplus = a.softplus;
    ep_in* f[] = {&p.u, &p.delta, &p.A, &p.B, &p.C, &p.D, &p.z, &p.delta_bias, &p.initial_state};
    inputs(f, 9, in);
    outputs(&p.y, &p.final_state, out);
    return p;
}

inline ep_ssd_params ssdParams(Slot const* in, OutSlot const* out, Attrs const& a) {
    ep_ssd_params p{};
    p.batch = dim(in, 0, 0);  // x [Bt, L, H, P], B [Bt, L, G, N]
    p.seqlen = dim(in, 0, 1);
    p.nheads = dim(in, 0, 2);
    p.headdim = dim(in, 0, 3);
    p.ngroups = dim(in, 3, 2);
    p.dstate = dim(in, 3, 3);
    p.dt_softplus = a.softplus;
    p.dt_min = a.dtMin;
    p.dt_max = a.dtMax;
    ep_in* f[] = {&p.x, &p.dt, &p.A, &p.B, &p.C, &p.D, &p.z, &p.dt_bias, &p.initial_state};
    inputs(f, 9, in);
    outputs(&p.y, &p.final_state, out);
    return p;
}

}  // namespace detail

// Output dims of a node from its input dims: y and the state. Returns false on a rank the op cannot take.
inline bool outputDims(Op op, Slot const* in, Slot* y, Slot* state) {
    Slot const& x = in[spec(op).primary];
    *y = Slot{};
    y->present = true;
    y->rank = x.rank;
    for (int32_t k = 0; k < x.rank; ++k) y->dims[k] = x.dims[k];
    *state = Slot{};
    state->present = true;
    switch (op) {
        case Op::kSelectiveScan:  // [Bt, D, A.N]
            if (in[0].rank != 3 || in[2].rank != 2) return false;
            state->rank = 3;
            state->dims[0] = in[0].dims[0], state->dims[1] = in[0].dims[1], state->dims[2] = in[2].dims[1];
            return true;
        case Op::kSsdChunkScan:  // [Bt, H, P, B.N]
            if (in[0].rank != 4 || in[3].rank != 4) return false;
            state->rank = 4;
            state->dims[0] = in[0].dims[0], state->dims[1] = in[0].dims[2], state->dims[2] = in[0].dims[3];
            state->dims[3] = in[3].dims[3];
            return true;
        case Op::kSelectiveStateUpdate:  // = state
            *state = in[0];
            return in[0].rank == 4 && in[1].rank == 3;
        case Op::kCausalConv1d:  // [Bt, D, W-1]
            if (in[0].rank != 3 || in[1].rank != 2) return false;
            state->rank = 3;
            state->dims[0] = in[0].dims[0], state->dims[1] = in[0].dims[1], state->dims[2] = in[1].dims[1] - 1;
            return true;
        case Op::kCausalConv1dUpdate:  // = conv_state
            *state = in[1];
            return in[0].rank == 2 && in[1].rank == 3;
    }
    return false;
}

// Device (or host) workspace bytes the op needs for these input sizes.
inline size_t workspaceBytes(Op op, Kernels const& k, Slot const* in, Attrs const& a) {
    if (op == Op::kSelectiveScan) {
        ep_selective_scan_params const p = detail::scanParams(in, nullptr, a);
        return k.selectiveScanWorkspace(&p);
    }
    if (op == Op::kSsdChunkScan) {
        ep_ssd_params const p = detail::ssdParams(in, nullptr, a);
        return k.ssdWorkspace(&p);
    }
    return 0;
}

// Run one node: EP_OK, a negative EP_ERR_* or a positive cudaError_t (edgeports_ssm_error_string).
inline int run(Op op, Kernels const& k, Slot const* in, OutSlot const* out, Attrs const& a, void* workspace,
               size_t workspaceBytes, void* stream) {
    using namespace detail;
    switch (op) {
        case Op::kSelectiveScan: {
            ep_selective_scan_params const p = scanParams(in, out, a);
            return k.selectiveScan(&p, workspace, workspaceBytes, stream);
        }
        case Op::kSsdChunkScan: {
            ep_ssd_params const p = ssdParams(in, out, a);
            return k.ssd(&p, workspace, workspaceBytes, stream);
        }
        case Op::kSelectiveStateUpdate: {
            ep_ssu_params p{};
            p.batch = dim(in, 0, 0);  // state [Bt, H, P, N], B [Bt, G, N]
            p.nheads = dim(in, 0, 1);
            p.headdim = dim(in, 0, 2);
            p.dstate = dim(in, 0, 3);
            p.ngroups = dim(in, 4, 1);
            p.dt_softplus = a.softplus;
            broadcastStrides(in[3], 3, p.a_stride);
            broadcastStrides(in[6], 2, p.d_stride);
            broadcastStrides(in[8], 2, p.dt_bias_stride);
            ep_in* f[] = {&p.state, &p.x, &p.dt, &p.A, &p.B, &p.C, &p.D, &p.z, &p.dt_bias};
            inputs(f, 9, in);
            outputs(&p.y, &p.new_state, out);
            return k.stateUpdate(&p, stream);
        }
        case Op::kCausalConv1d: {
            ep_conv_params p{};
            p.batch = dim(in, 0, 0);  // x [Bt, D, L], weight [D, W]
            p.dim = dim(in, 0, 1);
            p.seqlen = dim(in, 0, 2);
            p.width = dim(in, 1, 1);
            p.activation = a.activation;
            ep_in* f[] = {&p.x, &p.weight, &p.bias, &p.initial_state};
            inputs(f, 4, in);
            outputs(&p.y, &p.final_state, out);
            return k.conv(&p, stream);
        }
        case Op::kCausalConv1dUpdate: {
            ep_conv_update_params p{};
            p.batch = dim(in, 0, 0);  // x [Bt, D], weight [D, W]
            p.dim = dim(in, 0, 1);
            p.width = dim(in, 2, 1);
            p.activation = a.activation;
            ep_in* f[] = {&p.x, &p.conv_state, &p.weight, &p.bias};
            inputs(f, 4, in);
            outputs(&p.y, &p.new_conv_state, out);
            return k.convUpdate(&p, stream);
        }
    }
    return EP_ERR_ARGS;
}

}  // namespace edgeports

#endif  // EDGEPORTS_SSM_OPS_HPP
