// IPluginV3 plugins for the ai.edgeports ONNX nodes (notes: KERNELS.md), TensorRT >= 10.0 (JetPack 6: 10.3).
//
// One plugin class and one creator class serve the five ops; the OpSpec table of edgeports_ssm_ops.hpp holds
// what differs (name, required/optional inputs, attributes), and the same header turns a node's tensors into
// the params of the C entry points of edgeports_ssm.h, exactly as the ONNX Runtime custom ops (ort/) do.
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
#include "edgeports_ssm_ops.hpp"

#define EP_EXPORT extern "C" __attribute__((visibility("default")))

namespace edgeports {
namespace trt {
namespace {

using namespace nvinfer1;

constexpr char const* kNamespace = "edgeports";
constexpr char const* kVersion = "1";

ILoggerFinder* gLoggerFinder = nullptr;

void logError(std::string const& msg) noexcept {
    if (gLoggerFinder == nullptr) return;
    if (ILogger* logger = gLoggerFinder->findLogger()) logger->log(ILogger::Severity::kERROR, msg.c_str());
}

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
    return parseActivation(s.c_str());  // a NUL inside the declared length ends the string
}

Attrs parseFields(Op op, PluginFieldCollection const* fc) {
    Attrs a;
    if (fc == nullptr) return a;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr || f.data == nullptr || f.length < 1) continue;
        for (auto const& [field, name] : spec(op).attrs) {
            if (std::strcmp(f.name, name) != 0) continue;
            switch (field) {
                case Attr::kSoftplus: a.softplus = fieldInt(f) != 0; break;
                case Attr::kChunkSize: a.chunkSize = static_cast<int32_t>(fieldInt(f)); break;
                case Attr::kDtMin: a.dtMin = fieldFloat(f); break;
                case Attr::kDtMax: a.dtMax = fieldFloat(f); break;
                case Attr::kActivation: a.activation = fieldActivation(f); break;
                case Attr::kPresent: a.present = static_cast<int32_t>(fieldInt(f)); break;
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
        for (auto const& [field, name] : spec(mOp).attrs) {
            switch (field) {
                case Attr::kSoftplus: mSerialized.emplace_back(name, &mAttrs.softplus, PluginFieldType::kINT32, 1); break;
                case Attr::kChunkSize: mSerialized.emplace_back(name, &mAttrs.chunkSize, PluginFieldType::kINT32, 1); break;
                case Attr::kDtMin: mSerialized.emplace_back(name, &mAttrs.dtMin, PluginFieldType::kFLOAT32, 1); break;
                case Attr::kDtMax: mSerialized.emplace_back(name, &mAttrs.dtMax, PluginFieldType::kFLOAT32, 1); break;
                case Attr::kActivation:
                    // length includes the NUL so that an empty string still serialises as one field
                    mSerialized.emplace_back(name, mActivation.c_str(), PluginFieldType::kCHAR,
                                             static_cast<int32_t>(mActivation.size() + 1));
                    break;
                case Attr::kPresent: mSerialized.emplace_back(name, &mAttrs.present, PluginFieldType::kINT32, 1); break;
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

    // The engine's tensors in contract slot order (absent optional inputs not present); pointers when given.
    void slots(PluginTensorDesc const* d, int32_t nb, void const* const* x, Slot* in) const {
        for (int32_t s = 0; s < nbSlots(mOp); ++s) {
            const int32_t i = index(s, nb);
            if (i < 0) continue;
            in[s].present = true;
            in[s].data = x ? x[i] : nullptr;
            in[s].dtype = dtypeCode(d[i].type);
            in[s].rank = d[i].dims.nbDims;
            for (int32_t k = 0; k < d[i].dims.nbDims && k < kMaxRank; ++k) in[s].dims[k] = d[i].dims.d[k];
        }
    }

    size_t workspaceFor(PluginTensorDesc const* d, int32_t nb) const {
        Slot in[kMaxSlots];
        slots(d, nb, nullptr, in);
        return workspaceBytes(mOp, cudaKernels(), in, mAttrs);
    }

    Op mOp;
    Attrs mAttrs;
    int32_t mNbInputs = 0;
    std::vector<PluginField> mSerialized;
    PluginFieldCollection mFc{};
    std::string mActivation;
};

int32_t SsmPlugin::enqueue(PluginTensorDesc const* d, PluginTensorDesc const* od, void const* const* x,
                           void* const* y, void* workspace, cudaStream_t stream) noexcept {
    Slot in[kMaxSlots];
    slots(d, nbIn(), x, in);
    const OutSlot out[2] = {{y[0], dtypeCode(od[0].type)}, {y[1], dtypeCode(od[1].type)}};
    const Kernels k = cudaKernels();
    const size_t ws = workspaceBytes(mOp, k, in, mAttrs);
    const int rc = run(mOp, k, in, out, mAttrs, workspace, ws, stream);
    if (rc != EP_OK) {
        logError(std::string("edgeports ") + spec(mOp).name + ": " + edgeports_ssm_error_string(rc));
        return 1;
    }
    return 0;
}

class SsmPluginCreator final : public IPluginCreatorV3One {
public:
    explicit SsmPluginCreator(Op op) : mOp(op) {
        for (auto const& [field, name] : spec(op).attrs) {
            const PluginFieldType t = field == Attr::kActivation ? PluginFieldType::kCHAR
                                      : (field == Attr::kDtMin || field == Attr::kDtMax) ? PluginFieldType::kFLOAT32
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
