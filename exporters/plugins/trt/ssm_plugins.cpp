// IPluginV3 plugins for the ai.edgeports ONNX nodes (notes: KERNELS.md), TensorRT >= 10.0 (JetPack 6: 10.3).
//
// One plugin class and one creator class serve the five ops; an OpSpec table holds what differs (name,
// required/optional inputs, attributes). The arithmetic is the C entry points of edgeports_ssm.h, the
// same ones the Python tests exercise through ctypes.
//
// Inputs: the ONNX convention marks an absent optional input with an empty name, which TensorRT's ONNX
// parser cannot hand to a plugin, so exporters/trt.py drops those inputs and records the ones kept in the
// int attribute `present` (bit i = optional input i of the contract, in contract order). Without that
// attribute the optional inputs present are taken to be the leading ones.
//
// Types: every tensor may be float32, float16 or bfloat16 (the kernels convert on load); y takes the
// type of x (u), SSM states are float32, conv states take the type of x / conv_state. Format: linear.
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "edgeports_ssm.h"

#define EP_EXPORT extern "C" __attribute__((visibility("default")))

namespace edgeports {
namespace trt {
namespace {

using namespace nvinfer1;

constexpr char const* kNamespace = "edgeports";
constexpr char const* kVersion = "1";
constexpr int kMaxInputs = 9;

enum class Op : int32_t { kSelectiveScan = 0, kSsdChunkScan, kSelectiveStateUpdate, kCausalConv1d, kCausalConv1dUpdate };

// What each op's fields mean; `kind` says how they are typed on the wire.
enum class Field { kSoftplus, kChunkSize, kDtMin, kDtMax, kActivation, kPresent };

struct OpSpec {
    char const* name;
    int32_t required;       // leading inputs that are always there
    int32_t optional;       // trailing optional inputs, in contract order
    int32_t primary;        // input whose type y takes
    int32_t stateTypeFrom;  // input whose type the state output takes; -1 = float32
    std::vector<int32_t> float32Inputs;  // contract slots pinned to float32 (the contract's f32 tensors)
    std::vector<std::pair<Field, char const*>> fields;
};

OpSpec const& spec(Op op) {
    static OpSpec const specs[] = {
        // u, delta, A, B, C | D, z, delta_bias, initial_state
        {"SelectiveScan", 5, 4, 0, -1, {2, 5, 7, 8}, {{Field::kSoftplus, "delta_softplus"}, {Field::kPresent, "present"}}},
        // x, dt, A, B, C | D, z, dt_bias, initial_state
        {"SsdChunkScan", 5, 4, 0, -1, {2, 8},
         {{Field::kChunkSize, "chunk_size"}, {Field::kSoftplus, "dt_softplus"}, {Field::kDtMin, "dt_min"},
          {Field::kDtMax, "dt_max"}, {Field::kPresent, "present"}}},
        // state, x, dt, A, B, C | D, z, dt_bias
        {"SelectiveStateUpdate", 6, 3, 1, -1, {0, 3}, {{Field::kSoftplus, "dt_softplus"}, {Field::kPresent, "present"}}},
        // x, weight | bias, initial_state
        {"CausalConv1d", 2, 2, 0, 0, {}, {{Field::kActivation, "activation"}, {Field::kPresent, "present"}}},
        // x, conv_state, weight | bias
        {"CausalConv1dUpdate", 3, 1, 0, 1, {}, {{Field::kActivation, "activation"}, {Field::kPresent, "present"}}},
    };
    return specs[static_cast<int32_t>(op)];
}

ILoggerFinder* gLoggerFinder = nullptr;

void logError(std::string const& msg) noexcept {
    if (gLoggerFinder == nullptr) return;
    if (ILogger* logger = gLoggerFinder->findLogger()) logger->log(ILogger::Severity::kERROR, msg.c_str());
}

struct Attrs {
    int32_t softplus = 0;
    int32_t chunkSize = 256;  // kept for the round trip; the kernels choose their own blocking
    float dtMin = 0.f;
    float dtMax = INFINITY;
    int32_t activation = EP_ACT_NONE;
    int32_t present = -1;
};

int64_t fieldInt(PluginField const& f) {
    switch (f.type) {
        case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
        case PluginFieldType::kINT64: return *static_cast<int64_t const*>(f.data);
        case PluginFieldType::kINT16: return *static_cast<int16_t const*>(f.data);
        case PluginFieldType::kINT8: return *static_cast<int8_t const*>(f.data);
        default: throw std::invalid_argument(std::string("field ") + f.name + " is not an integer");
    }
}

float fieldFloat(PluginField const& f) {
    switch (f.type) {
        case PluginFieldType::kFLOAT32: return *static_cast<float const*>(f.data);
        case PluginFieldType::kFLOAT64: return static_cast<float>(*static_cast<double const*>(f.data));
        default: return static_cast<float>(fieldInt(f));
    }
}

int32_t fieldActivation(PluginField const& f) {
    if (f.type != PluginFieldType::kCHAR) throw std::invalid_argument("field activation is not a string");
    std::string s(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
    s = s.c_str();  // a NUL inside the declared length ends the string
    if (s.empty() || s == "none") return EP_ACT_NONE;
    if (s == "silu") return EP_ACT_SILU;
    throw std::invalid_argument("activation must be \"\" or \"silu\", got \"" + s + "\"");
}

Attrs parseFields(Op op, PluginFieldCollection const* fc) {
    Attrs a;
    if (fc == nullptr) return a;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr || f.data == nullptr || f.length < 1) continue;
        for (auto const& [field, name] : spec(op).fields) {
            if (std::strcmp(f.name, name) != 0) continue;
            switch (field) {
                case Field::kSoftplus: a.softplus = fieldInt(f) != 0; break;
                case Field::kChunkSize: a.chunkSize = static_cast<int32_t>(fieldInt(f)); break;
                case Field::kDtMin: a.dtMin = fieldFloat(f); break;
                case Field::kDtMax: a.dtMax = fieldFloat(f); break;
                case Field::kActivation: a.activation = fieldActivation(f); break;
                case Field::kPresent: a.present = static_cast<int32_t>(fieldInt(f)); break;
            }
        }
    }
    return a;
}

bool floatType(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16; }

int32_t dtypeCode(DataType t) { return t == DataType::kHALF ? EP_F16 : t == DataType::kBF16 ? EP_BF16 : EP_F32; }

class SsmPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    SsmPlugin(Op op, Attrs attrs) : mOp(op), mAttrs(attrs) {}

    // ---- IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override {
        try {
            auto* p = new SsmPlugin(mOp, mAttrs);
            p->mNbInputs = mNbInputs;
            return p;
        } catch (std::exception const& e) {
            logError(e.what());
            return nullptr;
        }
    }

    // ---- IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return spec(mOp).name; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

    // ---- IPluginV3OneBuild
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override {
        mNbInputs = nbInputs;
        return validInputCount(nbInputs) && nbOutputs == 2 ? 0 : 1;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != 2 || !validInputCount(nbInputs)) return 1;
        outputTypes[0] = inputTypes[spec(mOp).primary];
        outputTypes[1] = spec(mOp).stateTypeFrom < 0 ? DataType::kFLOAT : inputTypes[spec(mOp).stateTypeFrom];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            DimsExprs* out, int32_t nbOutputs, IExprBuilder& eb) noexcept override {
        if (nbOutputs != 2 || !validInputCount(nbInputs)) return 1;
        switch (mOp) {
            case Op::kSelectiveScan:  // y = u [Bt,D,L]; state [Bt, D, A.N]
                out[0] = in[0];
                out[1].nbDims = 3;
                out[1].d[0] = in[0].d[0];
                out[1].d[1] = in[0].d[1];
                out[1].d[2] = in[2].d[1];
                return 0;
            case Op::kSsdChunkScan:  // y = x [Bt,L,H,P]; state [Bt, H, P, B.N]
                out[0] = in[0];
                out[1].nbDims = 4;
                out[1].d[0] = in[0].d[0];
                out[1].d[1] = in[0].d[2];
                out[1].d[2] = in[0].d[3];
                out[1].d[3] = in[3].d[3];
                return 0;
            case Op::kSelectiveStateUpdate:  // y = x [Bt,H,P]; new state = state
                out[0] = in[1];
                out[1] = in[0];
                return 0;
            case Op::kCausalConv1d:  // y = x [Bt,D,L]; state [Bt, D, W-1]
                out[0] = in[0];
                out[1].nbDims = 3;
                out[1].d[0] = in[0].d[0];
                out[1].d[1] = in[0].d[1];
                out[1].d[2] = eb.operation(DimensionOperation::kSUB, *in[1].d[1], *eb.constant(1));
                return 0;
            case Op::kCausalConv1dUpdate:  // y = x [Bt,D]; new state = conv_state
                out[0] = in[0];
                out[1] = in[1];
                return 0;
        }
        return 1;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR || !floatType(d.type) || !validInputCount(nbInputs)) return false;
        OpSpec const& s = spec(mOp);
        if (pos == nbInputs) return d.type == inOut[s.primary].desc.type;
        if (pos == nbInputs + 1)
            return d.type == (s.stateTypeFrom < 0 ? DataType::kFLOAT : inOut[s.stateTypeFrom].desc.type);
        for (int32_t slot : s.float32Inputs)
            if (index(slot, nbInputs) == pos) return d.type == DataType::kFLOAT;
        return true;
    }

    int32_t getNbOutputs() const noexcept override { return 2; }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override {
        if (!validInputCount(nbInputs)) return 0;
        // sized for the profile's largest shapes; edgeports_*_workspace grows monotonically with seqlen
        std::vector<PluginTensorDesc> maxDesc(static_cast<size_t>(nbInputs));
        for (int32_t i = 0; i < nbInputs; ++i) {
            maxDesc[i] = inputs[i].desc;
            maxDesc[i].dims = inputs[i].max;
        }
        return workspaceFor(maxDesc.data(), nbInputs);
    }

    // ---- IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
        mNbInputs = nbInputs;
        return validInputCount(nbInputs) && nbOutputs == 2 ? 0 : 1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        mSerialized.clear();
        mActivation = mAttrs.activation == EP_ACT_SILU ? "silu" : "";
        for (auto const& [field, name] : spec(mOp).fields) {
            switch (field) {
                case Field::kSoftplus: mSerialized.emplace_back(name, &mAttrs.softplus, PluginFieldType::kINT32, 1); break;
                case Field::kChunkSize: mSerialized.emplace_back(name, &mAttrs.chunkSize, PluginFieldType::kINT32, 1); break;
                case Field::kDtMin: mSerialized.emplace_back(name, &mAttrs.dtMin, PluginFieldType::kFLOAT32, 1); break;
                case Field::kDtMax: mSerialized.emplace_back(name, &mAttrs.dtMax, PluginFieldType::kFLOAT32, 1); break;
                case Field::kActivation:
                    // length includes the NUL so that an empty string still serialises as one field
                    mSerialized.emplace_back(name, mActivation.c_str(), PluginFieldType::kCHAR,
                                             static_cast<int32_t>(mActivation.size() + 1));
                    break;
                case Field::kPresent: mSerialized.emplace_back(name, &mAttrs.present, PluginFieldType::kINT32, 1); break;
            }
        }
        mFc.nbFields = static_cast<int32_t>(mSerialized.size());
        mFc.fields = mSerialized.data();
        return &mFc;
    }

private:
    bool validInputCount(int32_t nbInputs) const {
        OpSpec const& s = spec(mOp);
        if (mAttrs.present >= 0) return nbInputs == s.required + __builtin_popcount(mAttrs.present);
        return nbInputs >= s.required && nbInputs <= s.required + s.optional;
    }

    // Position among the plugin's inputs of contract slot `slot`, or -1 when that optional input is absent.
    int32_t index(int32_t slot, int32_t nbInputs) const {
        OpSpec const& s = spec(mOp);
        if (slot < s.required) return slot;
        const int32_t o = slot - s.required;
        const int32_t present = mAttrs.present >= 0 ? mAttrs.present : (1 << (nbInputs - s.required)) - 1;
        if (!(present & (1 << o))) return -1;
        return s.required + __builtin_popcount(present & ((1 << o) - 1));
    }

    // Inputs the engine passes: fixed by `present` when the exporter set it, else as configured.
    int32_t nbIn() const {
        return mAttrs.present >= 0 ? spec(mOp).required + __builtin_popcount(mAttrs.present) : mNbInputs;
    }

    int64_t dim(PluginTensorDesc const* desc, int32_t nb, int32_t slot, int32_t d) const {
        return desc[index(slot, nb)].dims.d[d];
    }

    // Element strides of an input read as `target` dims, right-aligned, 0 on broadcast dims.
    void broadcastStrides(PluginTensorDesc const* desc, int32_t nb, int32_t slot, int32_t rank, int64_t* strides) const {
        for (int32_t k = 0; k < rank; ++k) strides[k] = 0;
        const int32_t i = index(slot, nb);
        if (i < 0) return;
        Dims const& d = desc[i].dims;
        int64_t s = 1;
        for (int32_t k = d.nbDims - 1, t = rank - 1; k >= 0 && t >= 0; --k, --t) {
            strides[t] = d.d[k] == 1 ? 0 : s;
            s *= d.d[k];
        }
    }

    // Fill the params of the op from descriptors (and pointers, when given: enqueue).
    ep_selective_scan_params ssParams(PluginTensorDesc const* d, int32_t nb, void const* const* x,
                                      PluginTensorDesc const* od, void* const* y) const {
        ep_selective_scan_params p{};
        p.batch = static_cast<int32_t>(dim(d, nb, 0, 0));
        p.dim = static_cast<int32_t>(dim(d, nb, 0, 1));
        p.seqlen = static_cast<int32_t>(dim(d, nb, 0, 2));
        p.dstate = static_cast<int32_t>(dim(d, nb, 2, 1));
        p.delta_softplus = mAttrs.softplus;
        ep_in* slots[] = {&p.u, &p.delta, &p.A, &p.B, &p.C, &p.D, &p.z, &p.delta_bias, &p.initial_state};
        fillInputs(slots, 9, d, nb, x);
        fillOutputs(&p.y, &p.final_state, od, y);
        return p;
    }

    ep_ssd_params ssdParams(PluginTensorDesc const* d, int32_t nb, void const* const* x, PluginTensorDesc const* od,
                            void* const* y) const {
        ep_ssd_params p{};
        p.batch = static_cast<int32_t>(dim(d, nb, 0, 0));
        p.seqlen = static_cast<int32_t>(dim(d, nb, 0, 1));
        p.nheads = static_cast<int32_t>(dim(d, nb, 0, 2));
        p.headdim = static_cast<int32_t>(dim(d, nb, 0, 3));
        p.ngroups = static_cast<int32_t>(dim(d, nb, 3, 2));
        p.dstate = static_cast<int32_t>(dim(d, nb, 3, 3));
        p.dt_softplus = mAttrs.softplus;
        p.dt_min = mAttrs.dtMin;
        p.dt_max = mAttrs.dtMax;
        ep_in* slots[] = {&p.x, &p.dt, &p.A, &p.B, &p.C, &p.D, &p.z, &p.dt_bias, &p.initial_state};
        fillInputs(slots, 9, d, nb, x);
        fillOutputs(&p.y, &p.final_state, od, y);
        return p;
    }

    void fillInputs(ep_in** slots, int32_t n, PluginTensorDesc const* d, int32_t nb, void const* const* x) const {
        for (int32_t s = 0; s < n; ++s) {
            const int32_t i = index(s, nb);
            *slots[s] = i < 0 ? ep_in{nullptr, 0} : ep_in{x ? x[i] : kPlaceholder, dtypeCode(d[i].type)};
        }
    }

    static void fillOutputs(ep_out* y, ep_out* state, PluginTensorDesc const* od, void* const* out) {
        if (od == nullptr || out == nullptr) return;
        *y = ep_out{out[0], dtypeCode(od[0].type)};
        *state = ep_out{out[1], dtypeCode(od[1].type)};
    }

    size_t workspaceFor(PluginTensorDesc const* d, int32_t nb) const {
        if (mOp == Op::kSelectiveScan) {
            const ep_selective_scan_params p = ssParams(d, nb, nullptr, nullptr, nullptr);
            return edgeports_selective_scan_workspace(&p);
        }
        if (mOp == Op::kSsdChunkScan) {
            const ep_ssd_params p = ssdParams(d, nb, nullptr, nullptr, nullptr);
            return edgeports_ssd_chunk_scan_workspace(&p);
        }
        return 0;
    }

    // Workspace queries need no data, only "present"; the kernels never see this pointer.
    static inline void const* const kPlaceholder = reinterpret_cast<void const*>(16);

    Op mOp;
    Attrs mAttrs;
    int32_t mNbInputs = 0;
    std::vector<PluginField> mSerialized;
    PluginFieldCollection mFc{};
    std::string mActivation;
};

int32_t SsmPlugin::enqueue(PluginTensorDesc const* d, PluginTensorDesc const* od, void const* const* x,
                           void* const* y, void* workspace, cudaStream_t stream) noexcept {
    const int32_t nb = nbIn();
    int rc = EP_OK;
    size_t ws = 0;
    switch (mOp) {
        case Op::kSelectiveScan: {
            const ep_selective_scan_params p = ssParams(d, nb, x, od, y);
            ws = edgeports_selective_scan_workspace(&p);
            rc = edgeports_selective_scan(&p, workspace, ws, stream);
            break;
        }
        case Op::kSsdChunkScan: {
            const ep_ssd_params p = ssdParams(d, nb, x, od, y);
            ws = edgeports_ssd_chunk_scan_workspace(&p);
            rc = edgeports_ssd_chunk_scan(&p, workspace, ws, stream);
            break;
        }
        case Op::kSelectiveStateUpdate: {
            ep_ssu_params p{};
            p.batch = static_cast<int32_t>(dim(d, nb, 0, 0));
            p.nheads = static_cast<int32_t>(dim(d, nb, 0, 1));
            p.headdim = static_cast<int32_t>(dim(d, nb, 0, 2));
            p.dstate = static_cast<int32_t>(dim(d, nb, 0, 3));
            p.ngroups = static_cast<int32_t>(dim(d, nb, 4, 1));
            p.dt_softplus = mAttrs.softplus;
            broadcastStrides(d, nb, 3, 3, p.a_stride);
            broadcastStrides(d, nb, 6, 2, p.d_stride);
            broadcastStrides(d, nb, 8, 2, p.dt_bias_stride);
            ep_in* slots[] = {&p.state, &p.x, &p.dt, &p.A, &p.B, &p.C, &p.D, &p.z, &p.dt_bias};
            fillInputs(slots, 9, d, nb, x);
            fillOutputs(&p.y, &p.new_state, od, y);
            rc = edgeports_selective_state_update(&p, stream);
            break;
        }
        case Op::kCausalConv1d: {
            ep_conv_params p{};
            p.batch = static_cast<int32_t>(dim(d, nb, 0, 0));
            p.dim = static_cast<int32_t>(dim(d, nb, 0, 1));
            p.seqlen = static_cast<int32_t>(dim(d, nb, 0, 2));
            p.width = static_cast<int32_t>(dim(d, nb, 1, 1));
            p.activation = mAttrs.activation;
            ep_in* slots[] = {&p.x, &p.weight, &p.bias, &p.initial_state};
            fillInputs(slots, 4, d, nb, x);
            fillOutputs(&p.y, &p.final_state, od, y);
            rc = edgeports_causal_conv1d(&p, stream);
            break;
        }
        case Op::kCausalConv1dUpdate: {
            ep_conv_update_params p{};
            p.batch = static_cast<int32_t>(dim(d, nb, 0, 0));
            p.dim = static_cast<int32_t>(dim(d, nb, 0, 1));
            p.width = static_cast<int32_t>(dim(d, nb, 2, 1));
            p.activation = mAttrs.activation;
            ep_in* slots[] = {&p.x, &p.conv_state, &p.weight, &p.bias};
            fillInputs(slots, 4, d, nb, x);
            fillOutputs(&p.y, &p.new_conv_state, od, y);
            rc = edgeports_causal_conv1d_update(&p, stream);
            break;
        }
    }
    if (rc != EP_OK) {
        logError(std::string("edgeports ") + spec(mOp).name + ": " + edgeports_ssm_error_string(rc));
        return 1;
    }
    return 0;
}

class SsmPluginCreator final : public IPluginCreatorV3One {
public:
    explicit SsmPluginCreator(Op op) : mOp(op) {
        for (auto const& [field, name] : spec(op).fields) {
            const PluginFieldType t = field == Field::kActivation ? PluginFieldType::kCHAR
                                      : (field == Field::kDtMin || field == Field::kDtMax) ? PluginFieldType::kFLOAT32
                                                                                           : PluginFieldType::kINT32;
            mFields.emplace_back(name, nullptr, t, 1);
        }
        mFc.nbFields = static_cast<int32_t>(mFields.size());
        mFc.fields = mFields.data();
    }

    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept override {
        try {
            return new SsmPlugin(mOp, parseFields(mOp, fc));
        } catch (std::exception const& e) {
            logError(std::string("edgeports ") + spec(mOp).name + " (" + (name ? name : "") + "): " + e.what());
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &mFc; }
    AsciiChar const* getPluginName() const noexcept override { return spec(mOp).name; }
    AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

private:
    Op mOp;
    std::vector<PluginField> mFields;
    PluginFieldCollection mFc{};
};

SsmPluginCreator gCreators[] = {SsmPluginCreator(Op::kSelectiveScan), SsmPluginCreator(Op::kSsdChunkScan),
                                SsmPluginCreator(Op::kSelectiveStateUpdate), SsmPluginCreator(Op::kCausalConv1d),
                                SsmPluginCreator(Op::kCausalConv1dUpdate)};
IPluginCreatorInterface* gCreatorList[] = {&gCreators[0], &gCreators[1], &gCreators[2], &gCreators[3], &gCreators[4]};
constexpr int32_t kNbCreators = sizeof(gCreatorList) / sizeof(gCreatorList[0]);

}  // namespace
}  // namespace trt
}  // namespace edgeports

// ---- the plugin-library interface of IPluginRegistry::loadLibrary (TensorRT >= 10.0) ----
EP_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { edgeports::trt::gLoggerFinder = finder; }

EP_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    nbCreators = edgeports::trt::kNbCreators;
    return edgeports::trt::gCreatorList;
}

// For hosts that dlopen the library themselves: registers every creator not yet registered in the
// global registry under the "edgeports" namespace. Returns how many are registered, or -1.
EP_EXPORT int32_t edgeports_trt_register_plugins(void) {
    using namespace edgeports::trt;
    nvinfer1::IPluginRegistry* reg = getPluginRegistry();
    if (reg == nullptr) return -1;
    for (SsmPluginCreator& c : gCreators) {
        if (reg->getCreator(c.getPluginName(), kVersion, kNamespace) != nullptr) continue;
        if (!reg->registerCreator(c, kNamespace)) return -1;
    }
    return kNbCreators;
}
