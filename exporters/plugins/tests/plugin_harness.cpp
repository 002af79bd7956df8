// Test harness: drives one edgeports plugin through the calls an engine makes, without TensorRT's builder,
// so its metadata (types, formats, workspace, field round trip) and its enqueue can be checked against the
// reference implementation on a GPU (tests/exporters/test_plugins.py). Built together with
// trt/ssm_plugins.cpp and the kernels against TensorRT's headers.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "edgeports_ssm.h"

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace {

DataType trtType(int32_t code) { return code == EP_F16 ? DataType::kHALF : code == EP_BF16 ? DataType::kBF16 : DataType::kFLOAT; }

PluginTensorDesc desc(int32_t rank, int64_t const* dims, int32_t type) {
    PluginTensorDesc d{};
    d.dims.nbDims = rank;
    for (int32_t k = 0; k < rank; ++k) d.dims.d[k] = dims[k];
    d.type = trtType(type);
    d.format = TensorFormat::kLINEAR;
    d.scale = 1.f;
    return d;
}

struct Fail {
    std::string msg;
};

template <typename T>
T* capability(IPluginV3* p, PluginCapabilityType t) {
    auto* c = static_cast<T*>(p->getCapabilityInterface(t));
    if (c == nullptr) throw Fail{"getCapabilityInterface returned null"};
    return c;
}

}  // namespace

// Returns 0 on success; otherwise writes a message to err.
extern "C" __attribute__((visibility("default"))) int ep_harness_run(
    char const* op, int32_t present, int32_t softplus, float dtMin, float dtMax, char const* activation, int32_t nbIn,
    int32_t const* inRanks, int64_t const* inDims /* nbIn x 8 */, int32_t const* inTypes, void const* const* inPtrs,
    int32_t const* outRanks, int64_t const* outDims /* 2 x 8 */, int32_t const* outTypes, void* const* outPtrs,
    void* stream, char* err, int32_t errLen) {
    std::unique_ptr<IPluginV3> built, restored, attached;
    void* ws = nullptr;
    try {
        int32_t nb = 0;
        IPluginCreatorInterface* const* list = getCreators(nb);
        IPluginCreatorV3One* creator = nullptr;
        for (int32_t i = 0; i < nb; ++i) {
            auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
            if (std::strcmp(c->getPluginName(), op) == 0) creator = c;
        }
        if (creator == nullptr) throw Fail{std::string("no creator for ") + op};
        if (std::strcmp(creator->getPluginNamespace(), "edgeports") != 0) throw Fail{"wrong namespace"};

        // fields as TensorRT's ONNX parser would pass them: each attribute of the node under its name
        int32_t const chunk = 64;
        std::vector<PluginField> f = {
            {"present", &present, PluginFieldType::kINT32, 1},       {"delta_softplus", &softplus, PluginFieldType::kINT32, 1},
            {"dt_softplus", &softplus, PluginFieldType::kINT32, 1},  {"chunk_size", &chunk, PluginFieldType::kINT32, 1},
            {"dt_min", &dtMin, PluginFieldType::kFLOAT32, 1},        {"dt_max", &dtMax, PluginFieldType::kFLOAT32, 1},
            {"activation", activation, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(activation))}};
        PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
        built.reset(creator->createPlugin("harness", &fc, TensorRTPhase::kBUILD));
        if (!built) throw Fail{"createPlugin(kBUILD) failed"};
        auto* build = capability<IPluginV3OneBuild>(built.get(), PluginCapabilityType::kBUILD);
        auto* core = capability<IPluginV3OneCore>(built.get(), PluginCapabilityType::kCORE);
        if (std::strcmp(core->getPluginName(), op) != 0 || build->getNbOutputs() != 2) throw Fail{"bad core info"};

        std::vector<DynamicPluginTensorDesc> io(static_cast<size_t>(nbIn) + 2);
        std::vector<PluginTensorDesc> plain(io.size());
        std::vector<DataType> types(static_cast<size_t>(nbIn));
        for (int32_t i = 0; i < nbIn + 2; ++i) {
            const bool isIn = i < nbIn;
            plain[i] = isIn ? desc(inRanks[i], inDims + 8 * i, inTypes[i]) : desc(outRanks[i - nbIn], outDims + 8 * (i - nbIn), outTypes[i - nbIn]);
            io[i].desc = plain[i];
            io[i].min = io[i].max = io[i].opt = plain[i].dims;
            if (isIn) types[i] = plain[i].type;
        }
        DataType outTypesTrt[2];
        if (build->getOutputDataTypes(outTypesTrt, 2, types.data(), nbIn) != 0) throw Fail{"getOutputDataTypes failed"};
        for (int k = 0; k < 2; ++k)
            if (outTypesTrt[k] != plain[nbIn + k].type) throw Fail{"getOutputDataTypes disagrees with the expected output " + std::to_string(k)};
        for (int32_t pos = 0; pos < nbIn + 2; ++pos)
            if (!build->supportsFormatCombination(pos, io.data(), nbIn, 2))
                throw Fail{"supportsFormatCombination rejected position " + std::to_string(pos)};
        if (build->configurePlugin(io.data(), nbIn, io.data() + nbIn, 2) != 0) throw Fail{"configurePlugin failed"};
        const size_t wsBytes = build->getWorkspaceSize(io.data(), nbIn, io.data() + nbIn, 2);

        // the engine serialises the fields, recreates the plugin at runtime and attaches it to a context
        auto* rt = capability<IPluginV3OneRuntime>(built.get(), PluginCapabilityType::kRUNTIME);
        restored.reset(creator->createPlugin("harness", rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
        if (!restored) throw Fail{"createPlugin(kRUNTIME) from the serialised fields failed"};
        attached.reset(capability<IPluginV3OneRuntime>(restored.get(), PluginCapabilityType::kRUNTIME)->attachToContext(nullptr));
        if (!attached) throw Fail{"attachToContext failed"};
        auto* run = capability<IPluginV3OneRuntime>(attached.get(), PluginCapabilityType::kRUNTIME);
        if (run->onShapeChange(plain.data(), nbIn, plain.data() + nbIn, 2) != 0) throw Fail{"onShapeChange failed"};
        if (wsBytes > 0 && cudaMalloc(&ws, wsBytes) != cudaSuccess) throw Fail{"cudaMalloc of the workspace failed"};
        auto s = static_cast<cudaStream_t>(stream);
        if (run->enqueue(plain.data(), plain.data() + nbIn, inPtrs, outPtrs, ws, s) != 0) throw Fail{"enqueue failed"};
        if (cudaStreamSynchronize(s) != cudaSuccess) throw Fail{"kernel failed"};
        cudaFree(ws);
        return 0;
    } catch (Fail const& e) {
        cudaFree(ws);
        std::snprintf(err, static_cast<size_t>(errLen), "%s", e.msg.c_str());
        return 1;
    }
}
