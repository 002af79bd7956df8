// ONNX Runtime custom-op library for the ai.edgeports domain (exporters/onnx_custom.py, `--onnx-ssm custom`).
//
// `SessionOptions.register_custom_ops_library(path)` calls RegisterCustomOps below, which adds the five ops
// (SelectiveScan, SsdChunkScan, SelectiveStateUpdate, CausalConv1d, CausalConv1dUpdate) for the CPU execution
// provider (the host reference, kernels/host_reference.cpp) and, in a build with EDGEPORTS_ORT_CUDA, for the
// CUDA execution provider (the CUDA kernels of kernels/*.cu, enqueued on ORT's compute stream). A node's
// tensors become kernel params through edgeports_ssm_ops.hpp, exactly as in the TensorRT plugins.
//
// Types. ONNX Runtime infers a custom op's output types from the first registered version whose input
// types match the node, so each op is registered once per activation dtype T (float32, float16, bfloat16):
// the activation input (u / x) is declared T, y is T, the SSM state output float32 and the conv state
// output T; every other input takes any type (the kernels convert on load; unsupported ones are refused
// when the node runs). Output shapes are set when the node runs (no shape inference is registered: ORT's
// shape-inference context cannot describe a node with absent optional inputs).
//
// Built against the C API of ONNX Runtime 1.21 headers (ORT_API_VERSION 21); the versioned C API lets a
// later runtime (1.31 GPU, 1.32 CPU here) load it.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "edgeports_ssm_ops.hpp"

namespace edgeports {
namespace ort {
namespace {

constexpr char const* kDomain = "ai.edgeports";

OrtApi const* gApi = nullptr;

enum class Provider { kCpu, kCuda };

// An OrtStatus (null on success) raised as an exception, and back: the kernels talk to ORT through statuses.
void check(OrtStatus* status) {
    if (status == nullptr) return;
    std::string const msg = gApi->GetErrorMessage(status);
    gApi->ReleaseStatus(status);
    throw std::runtime_error(msg);
}

int32_t epDtype(ONNXTensorElementDataType t, char const* what) {
    switch (t) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return EP_F32;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return EP_F16;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return EP_BF16;
        default: throw std::invalid_argument(std::string(what) + ": only float32, float16 and bfloat16 are supported");
    }
}

// Attribute `name` of the node, or `dflt` when the node does not carry it.
template <typename T, typename Get>
T attrOr(OrtKernelInfo const* info, char const* name, T dflt, Get get) {
    T value{};
    OrtStatus* s = (gApi->*get)(info, name, &value);
    if (s != nullptr) {
        gApi->ReleaseStatus(s);
        return dflt;
    }
    return value;
}

std::string stringAttr(OrtKernelInfo const* info, char const* name) {
    size_t size = 0;
    OrtStatus* s = gApi->KernelInfoGetAttribute_string(info, name, nullptr, &size);
    if (s != nullptr) {  // absent
        gApi->ReleaseStatus(s);
        return "";
    }
    std::string value(size, '\0');
    check(gApi->KernelInfoGetAttribute_string(info, name, value.data(), &size));
    return std::string(value.c_str());
}

Attrs readAttrs(Op op, OrtKernelInfo const* info) {
    Attrs a;
    for (auto const& [attr, name] : spec(op).attrs) {
        switch (attr) {
            case Attr::kSoftplus:
                a.softplus = attrOr<int64_t>(info, name, 0, &OrtApi::KernelInfoGetAttribute_int64) != 0;
                break;
            case Attr::kChunkSize:
                a.chunkSize = static_cast<int32_t>(attrOr<int64_t>(info, name, 256, &OrtApi::KernelInfoGetAttribute_int64));
                break;
            case Attr::kDtMin: a.dtMin = attrOr<float>(info, name, 0.f, &OrtApi::KernelInfoGetAttribute_float); break;
            case Attr::kDtMax: a.dtMax = attrOr<float>(info, name, INFINITY, &OrtApi::KernelInfoGetAttribute_float); break;
            case Attr::kActivation: a.activation = parseActivation(stringAttr(info, name)); break;
            case Attr::kPresent: break;  // TensorRT's parser only; ORT passes absent inputs as absent
        }
    }
    return a;
}

Slot slotOf(OrtValue const* value, char const* what) {
    Slot s;
    if (value == nullptr) return s;
    OrtTensorTypeAndShapeInfo* info = nullptr;
    check(gApi->GetTensorTypeAndShape(value, &info));
    std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> guard(
        info, [](OrtTensorTypeAndShapeInfo* i) { gApi->ReleaseTensorTypeAndShapeInfo(i); });
    ONNXTensorElementDataType type;
    size_t rank = 0;
    check(gApi->GetTensorElementType(info, &type));
    check(gApi->GetDimensionsCount(info, &rank));
    if (rank > static_cast<size_t>(kMaxRank)) throw std::invalid_argument(std::string(what) + ": rank above 4");
    check(gApi->GetDimensions(info, s.dims, rank));
    void* data = nullptr;
    check(gApi->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
    s.present = true;
    s.data = data;
    s.dtype = epDtype(type, what);
    s.rank = static_cast<int32_t>(rank);
    return s;
}

// Device scratch from the allocator of the node's execution provider, freed when the node returns (ORT
// runs its CUDA kernels on one stream, so a later reuse of the block is ordered after this kernel).
class Scratch {
public:
    Scratch(OrtKernelContext* ctx, OrtValue const* like, size_t bytes) {
        if (bytes == 0) return;
        OrtMemoryInfo const* mem = nullptr;
        check(gApi->GetTensorMemoryInfo(like, &mem));
        check(gApi->KernelContext_GetAllocator(ctx, mem, &mAllocator));
        mData = mAllocator->Alloc(mAllocator, bytes);
        if (mData == nullptr) throw std::runtime_error("workspace allocation failed");
    }
    ~Scratch() {
        if (mAllocator == nullptr) return;
        if (mData != nullptr) mAllocator->Free(mAllocator, mData);
        gApi->ReleaseAllocator(mAllocator);
    }
    Scratch(Scratch const&) = delete;
    Scratch& operator=(Scratch const&) = delete;
    void* data() const { return mData; }

private:
    OrtAllocator* mAllocator = nullptr;
    void* mData = nullptr;
};

struct SsmKernel {
    Op op;
    Provider provider;
    Attrs attrs;

    OrtStatusPtr ComputeV2(OrtKernelContext* ctx) noexcept {
        try {
            compute(ctx);
            return nullptr;
        } catch (std::exception const& e) {
            std::string const msg = std::string("edgeports ") + spec(op).name + ": " + e.what();
            return gApi->CreateStatus(ORT_RUNTIME_EXCEPTION, msg.c_str());
        }
    }

    void compute(OrtKernelContext* ctx) {
        size_t count = 0;
        check(gApi->KernelContext_GetInputCount(ctx, &count));
        Slot in[kMaxSlots];
        OrtValue const* values[kMaxSlots] = {};
        for (size_t i = 0; i < count && i < static_cast<size_t>(nbSlots(op)); ++i) {
            check(gApi->KernelContext_GetInput(ctx, i, &values[i]));
            in[i] = slotOf(values[i], "input");
        }
        for (int32_t i = 0; i < spec(op).required; ++i)
            if (!in[i].present) throw std::invalid_argument("required input " + std::to_string(i) + " is missing");
        Slot y, state;
        if (!outputDims(op, in, &y, &state)) throw std::invalid_argument("an input has the wrong rank");
        OutSlot out[2];
        Slot const* shapes[2] = {&y, &state};
        for (size_t i = 0; i < 2; ++i) {
            OrtValue* value = nullptr;
            check(gApi->KernelContext_GetOutput(ctx, i, shapes[i]->dims, static_cast<size_t>(shapes[i]->rank), &value));
            Slot const s = slotOf(value, "output");
            out[i] = OutSlot{const_cast<void*>(s.data), s.dtype};
        }
        Kernels const k = kernels();
        void* stream = nullptr;
        if (provider == Provider::kCuda) check(gApi->KernelContext_GetGPUComputeStream(ctx, &stream));
        size_t const bytes = workspaceBytes(op, k, in, attrs);
        Scratch const ws(ctx, values[spec(op).primary], bytes);
        int const rc = run(op, k, in, out, attrs, ws.data(), bytes, stream);
        if (rc != EP_OK) throw std::runtime_error(errorString(rc));
    }

    static std::string errorString(int rc) {
#ifdef EDGEPORTS_ORT_CUDA
        return edgeports_ssm_error_string(rc);
#else  // the host reference returns EP_ERR_ARGS only
        return "invalid arguments (a required tensor is missing, a dtype is unknown or a size is out of range): " +
               std::to_string(rc);
#endif
    }

    Kernels kernels() const {
#ifdef EDGEPORTS_ORT_CUDA
        if (provider == Provider::kCuda) return cudaKernels();
#endif
        return hostKernels();
    }
};

struct SsmOp : Ort::CustomOpBase<SsmOp, SsmKernel, true> {
    SsmOp(Op op, Provider provider, ONNXTensorElementDataType activation)
        : mOp(op), mProvider(provider), mActivation(activation) {}

    OrtStatusPtr CreateKernelV2(OrtApi const&, OrtKernelInfo const* info, void** kernel) const noexcept {
        try {
            *kernel = new SsmKernel{mOp, mProvider, readAttrs(mOp, info)};
            return nullptr;
        } catch (std::exception const& e) {
            std::string const msg = std::string("edgeports ") + spec(mOp).name + ": " + e.what();
            return gApi->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
        }
    }

    char const* GetName() const { return spec(mOp).name; }
    char const* GetExecutionProviderType() const {
        return mProvider == Provider::kCuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
    }

    size_t GetInputTypeCount() const { return static_cast<size_t>(nbSlots(mOp)); }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        return static_cast<int32_t>(i) == spec(mOp).primary ? mActivation : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return static_cast<int32_t>(i) < spec(mOp).required ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
    }

    size_t GetOutputTypeCount() const { return 2; }
    ONNXTensorElementDataType GetOutputType(size_t i) const {
        if (i == 0 || spec(mOp).stateTypeFrom >= 0) return mActivation;
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }

private:
    Op mOp;
    Provider mProvider;
    ONNXTensorElementDataType mActivation;
};

constexpr ONNXTensorElementDataType kActivations[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                      ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
                                                      ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16};

std::vector<std::unique_ptr<SsmOp>>& allOps() {
    static std::vector<std::unique_ptr<SsmOp>> ops = [] {
        std::vector<std::unique_ptr<SsmOp>> v;
        std::vector<Provider> providers{Provider::kCpu};
#ifdef EDGEPORTS_ORT_CUDA
        providers.push_back(Provider::kCuda);
#endif
        for (Provider p : providers)
            for (int32_t o = 0; o < kNbOps; ++o)
                for (ONNXTensorElementDataType t : kActivations) v.push_back(std::make_unique<SsmOp>(static_cast<Op>(o), p, t));
        return v;
    }();
    return ops;
}

}  // namespace
}  // namespace ort
}  // namespace edgeports

// Called by ONNX Runtime's RegisterCustomOpsLibrary: adds the ai.edgeports domain to the session options.
// The domain objects live as long as the process (sessions keep pointers to them).
extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                               OrtApiBase const* apiBase) {
    using namespace edgeports::ort;
    static std::mutex lock;
    std::lock_guard<std::mutex> guard(lock);
    if (gApi == nullptr) {
        gApi = apiBase->GetApi(ORT_API_VERSION);
        if (gApi == nullptr)  // a runtime older than these headers: API 1 can still say so
            return apiBase->GetApi(1)->CreateStatus(ORT_FAIL, "the edgeports custom ops need ONNX Runtime >= 1.21");
        Ort::InitApi(gApi);
    }
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* s = gApi->CreateCustomOpDomain(kDomain, &domain)) return s;
    for (auto const& op : allOps())
        if (OrtStatus* s = gApi->CustomOpDomain_Add(domain, op.get())) return s;
    return gApi->AddCustomOpDomain(options, domain);
}

// What this build provides, for edgeports' runner and tests: 1 = CPU only, 2 = CPU and CUDA.
extern "C" __attribute__((visibility("default"))) int edgeports_ort_providers(void) {
#ifdef EDGEPORTS_ORT_CUDA
    return 2;
#else
    return 1;
#endif
}
