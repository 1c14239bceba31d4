// Drives the MatchingScore plugin the way TensorRT does, on the CPU: the creator from getCreators(), fields as the
// ONNX parser passes them, format negotiation, output type and shape, configure / shape checks, serialization,
// attachToContext with an error recorder, and enqueue through the real launcher into fake_cuda_driver.h.
// Needs TensorRT's public headers (no library). Used by tests/engine/test_kernel_aot.py; prints one line per
// failed check and exits 1 if any failed.
//
//   plugin_harness <op_type> <plugin_version> <plugin_namespace>     (from MATCHING_SCORE, to cross-check)
#define ONERANK_STATIC_REGISTRATION 0
#include "matchingScoreKernel.cpp"
#include "matchingScorePlugin.cpp"
#include "matchingScorePluginCreator.cpp"
#include "pluginRegistration.cpp"

#include "fake_cuda_driver.h"

#include <cstdio>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::printf("FAILED line %d: %s\n", __LINE__, #cond);                                                      \
            ++gFailures;                                                                                               \
        }                                                                                                              \
    } while (0)

struct CapturingLogger : ILogger
{
    std::vector<std::string> errors;
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            errors.emplace_back(msg);
        }
    }
} gLogger;

struct Finder : ILoggerFinder
{
    ILogger* findLogger() override
    {
        return &gLogger;
    }
} gFinder;

struct Recorder : IErrorRecorder
{
    std::vector<std::string> errors;
    int32_t refs = 0;
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(errors.size());
    }
    ErrorCode getErrorCode(int32_t) const noexcept override
    {
        return ErrorCode::kFAILED_EXECUTION;
    }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override
    {
        return errors.at(static_cast<size_t>(i)).c_str();
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        errors.clear();
    }
    bool reportError(ErrorCode, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(desc);
        return true;
    }
    RefCount incRefCount() noexcept override
    {
        return ++refs;
    }
    RefCount decRefCount() noexcept override
    {
        return --refs;
    }
};

struct ResourceContext : IPluginResourceContext
{
    Recorder* recorder;
    explicit ResourceContext(Recorder* r)
        : recorder(r)
    {
    }
    IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return recorder;
    }
};

struct FakeExprBuilder : IExprBuilder
{
    FakeExprBuilder()
    {
        mImpl = nullptr; // getOutputShapes must only copy the input expressions, never build new ones
    }
};

Dims dims(std::vector<int64_t> const& values)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    for (size_t i = 0; i < values.size(); ++i)
    {
        d.d[i] = values[i];
    }
    return d;
}

DynamicPluginTensorDesc dynamicDesc(DataType type, Dims const& d, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc desc{};
    desc.desc.type = type;
    desc.desc.format = format;
    desc.desc.dims = d;
    desc.min = desc.opt = desc.max = d;
    return desc;
}

IPluginV3* create(IPluginCreatorV3One& creator, std::vector<PluginField> const& fields)
{
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return creator.createPlugin("matching_score", &fc, TensorRTPhase::kBUILD);
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 4)
    {
        std::printf("usage: plugin_harness <op_type> <plugin_version> <plugin_namespace>\n");
        return 2;
    }
    setLoggerFinder(&gFinder);
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    CHECK(nbCreators == 1 && std::string(creators[0]->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
    auto& creator = *static_cast<IPluginCreatorV3One*>(creators[0]);
    CHECK(std::string(creator.getPluginName()) == argv[1]);
    CHECK(std::string(creator.getPluginVersion()) == argv[2]);
    CHECK(std::string(creator.getPluginNamespace()) == argv[3]);
    PluginFieldCollection const* names = creator.getFieldNames();
    CHECK(names->nbFields == 2 && names->fields[0].type == PluginFieldType::kFLOAT32
        && names->fields[1].type == PluginFieldType::kCHAR);

    // Fields exactly as onnx-tensorrt's loadFields passes them: float by value, string with its NUL.
    float const scale = 0.125F;
    std::string const ns = std::string(argv[3]) + '\0';
    PluginField const scaleField(names->fields[0].name, &scale, PluginFieldType::kFLOAT32, 1);
    PluginField const nsField(names->fields[1].name, ns.data(), PluginFieldType::kCHAR, static_cast<int32_t>(ns.size()));
    std::string const otherNs = "other";
    int32_t const intScale = 1;
    size_t errorsBefore = gLogger.errors.size();
    CHECK(create(creator, {scaleField, PluginField(names->fields[1].name, otherNs.data(), PluginFieldType::kCHAR, 5)})
        == nullptr);
    CHECK(create(creator, {nsField}) == nullptr);
    CHECK(create(creator, {PluginField(names->fields[0].name, &intScale, PluginFieldType::kINT32, 1)}) == nullptr);
    CHECK(gLogger.errors.size() == errorsBefore + 3); // each refusal says why
    IPluginV3* plugin = create(creator, {scaleField, nsField});
    CHECK(plugin != nullptr);
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    CHECK(std::string(core->getPluginName()) == argv[1] && std::string(core->getPluginNamespace()) == argv[3]);
    CHECK(build->getNbOutputs() == 1);

    // Output type: fp32 for fp32 or fp16 inputs of one type; anything else refused.
    DataType out{};
    DataType const f32[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
    DataType const f16[3] = {DataType::kHALF, DataType::kHALF, DataType::kINT32};
    DataType const mixed[3] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT32};
    DataType const ints[3] = {DataType::kINT8, DataType::kINT8, DataType::kINT32};
    CHECK(build->getOutputDataTypes(&out, 1, f32, 3) == 0 && out == DataType::kFLOAT);
    CHECK(build->getOutputDataTypes(&out, 1, f16, 3) == 0 && out == DataType::kFLOAT);
    CHECK(build->getOutputDataTypes(&out, 1, mixed, 3) != 0 && build->getOutputDataTypes(&out, 1, ints, 3) != 0);
    // A BOOL or UINT8 mask (what a version-1 export had; plugins cannot take either) is refused, saying why.
    DataType const boolMask[3] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kBOOL};
    DataType const byteMask[3] = {DataType::kHALF, DataType::kHALF, DataType::kUINT8};
    errorsBefore = gLogger.errors.size();
    CHECK(build->getOutputDataTypes(&out, 1, boolMask, 3) != 0 && build->getOutputDataTypes(&out, 1, byteMask, 3) != 0);
    CHECK(gLogger.errors.size() == errorsBefore + 2 && gLogger.errors.back().find("int32") != std::string::npos);

    // Format negotiation, asked position by position as TensorRT does: exactly two combinations survive.
    DataType const types[]
        = {DataType::kFLOAT, DataType::kHALF, DataType::kBOOL, DataType::kUINT8, DataType::kINT32, DataType::kINT8};
    TensorFormat const formats[] = {TensorFormat::kLINEAR, TensorFormat::kCHW32};
    Dims const zDims = dims({2, 3, 64}), rDims = dims({2, 7, 3, 64}), vDims = dims({2, 7}), sDims = dims({2, 7, 3});
    Dims const shapes[4] = {zDims, rDims, vDims, sDims};
    std::vector<std::string> accepted;
    DynamicPluginTensorDesc io[4];
    auto search = [&](auto&& self, int32_t pos, std::string path) -> void {
        if (pos == 4)
        {
            accepted.push_back(path);
            return;
        }
        for (DataType t : types)
        {
            for (TensorFormat f : formats)
            {
                io[pos] = dynamicDesc(t, shapes[pos], f);
                if (build->supportsFormatCombination(pos, io, 3, 1))
                {
                    self(self, pos + 1, path + std::to_string(static_cast<int>(t)) + (f == formats[0] ? "L" : "X"));
                }
            }
        }
    };
    search(search, 0, "");
    CHECK(accepted.size() == 2);
    CHECK(accepted.size() == 2 && accepted[0] == "0L0L3L0L" && accepted[1] == "1L1L3L0L"); // f32 | f16, int32, f32
    // The mask position on its own: kINT32 linear only (kBOOL and kUINT8 are no plugin types).
    io[0] = dynamicDesc(DataType::kFLOAT, zDims);
    io[1] = dynamicDesc(DataType::kFLOAT, rDims);
    io[2] = dynamicDesc(DataType::kBOOL, vDims);
    CHECK(!build->supportsFormatCombination(2, io, 3, 1));
    io[2] = dynamicDesc(DataType::kUINT8, vDims);
    CHECK(!build->supportsFormatCombination(2, io, 3, 1));
    io[2] = dynamicDesc(DataType::kINT32, vDims);
    CHECK(build->supportsFormatCombination(2, io, 3, 1));

    // Output shape = r's first three dimension expressions.
    DimsExprs in[3]{};
    in[0].nbDims = 3;
    in[1].nbDims = 4;
    in[2].nbDims = 2;
    for (int32_t i = 0; i < 4; ++i)
    {
        in[1].d[i] = reinterpret_cast<IDimensionExpr const*>(static_cast<uintptr_t>(0x1000 + 16 * i));
    }
    DimsExprs shape{};
    FakeExprBuilder exprBuilder;
    CHECK(build->getOutputShapes(in, 3, nullptr, 0, &shape, 1, exprBuilder) == 0);
    CHECK(shape.nbDims == 3 && shape.d[0] == in[1].d[0] && shape.d[1] == in[1].d[1] && shape.d[2] == in[1].d[2]);

    // Shape agreement between z, r, valid (unknown build-time dims pass; a mismatch does not).
    DynamicPluginTensorDesc good[3] = {dynamicDesc(DataType::kFLOAT, dims({-1, 3, 64})),
        dynamicDesc(DataType::kFLOAT, dims({-1, -1, 3, 64})), dynamicDesc(DataType::kINT32, dims({-1, -1}))};
    DynamicPluginTensorDesc bad[3] = {dynamicDesc(DataType::kFLOAT, dims({-1, 3, 32})), good[1], good[2]};
    DynamicPluginTensorDesc boolValid[3] = {good[0], good[1], dynamicDesc(DataType::kBOOL, dims({-1, -1}))};
    DynamicPluginTensorDesc outDesc = dynamicDesc(DataType::kFLOAT, dims({-1, -1, 3}));
    CHECK(build->configurePlugin(good, 3, &outDesc, 1) == 0);
    CHECK(build->configurePlugin(bad, 3, &outDesc, 1) != 0);
    CHECK(build->configurePlugin(boolValid, 3, &outDesc, 1) != 0);

    // Serialization round trip: the runtime phase rebuilds the plugin from getFieldsToSerialize().
    IPluginV3* copy = plugin->clone();
    delete plugin; // the clone must not point into the deleted original
    auto* copyRuntime = static_cast<IPluginV3OneRuntime*>(copy->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serialized = copyRuntime->getFieldsToSerialize();
    CHECK(serialized->nbFields == 1 && std::string(serialized->fields[0].name) == names->fields[0].name
        && *static_cast<float const*>(serialized->fields[0].data) == scale);
    IPluginV3* restored = creator.createPlugin("matching_score", serialized, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    delete restored;

    // Runtime: attach to a context with an error recorder, then enqueue through the launcher.
    Recorder recorder;
    ResourceContext context(&recorder);
    IPluginV3* attached = copyRuntime->attachToContext(&context);
    CHECK(attached != nullptr && recorder.refs == 1);
    auto* run = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginTensorDesc inDesc[3] = {{zDims, DataType::kHALF, TensorFormat::kLINEAR, 1.0F},
        {rDims, DataType::kHALF, TensorFormat::kLINEAR, 1.0F}, {vDims, DataType::kINT32, TensorFormat::kLINEAR, 1.0F}};
    PluginTensorDesc scoresDesc{sDims, DataType::kFLOAT, TensorFormat::kLINEAR, 1.0F};
    CHECK(run->onShapeChange(inDesc, 3, &scoresDesc, 1) == 0);
    alignas(256) static unsigned char memory[4096];
    void const* inputs[3] = {memory, memory + 1024, memory + 2048};
    void* outputs[1] = {memory + 3072};
    gDevice = FakeDevice{};
    gDevice.major = 8;
    gDevice.minor = 6;
    CHECK(run->enqueue(inDesc, &scoresDesc, inputs, outputs, nullptr, nullptr) == 0);
    CHECK(gDevice.launches == 1 && gDevice.loads.size() == 1 && gDevice.loads[0].accepted);
    CHECK(gDevice.ints[0] == 42 && gDevice.ints[1] == 3 && gDevice.ints[2] == 21 && gDevice.ints[3] == 64);
    CHECK(gDevice.scale == scale && k::kImages[gDevice.loads[0].image].dtype == k::ScoreDtype::kFLOAT16);
    CHECK(recorder.errors.empty());

    gDevice = FakeDevice{};
    gDevice.major = 7;
    gDevice.minor = 5;
    gDevice.context = 2;
    CHECK(run->enqueue(inDesc, &scoresDesc, inputs, outputs, nullptr, nullptr) == CUDA_ERROR_NO_BINARY_FOR_GPU);
    CHECK(gDevice.launches == 0 && recorder.errors.size() == 1);
    CHECK(!recorder.errors.empty() && recorder.errors[0].find("sm_75") != std::string::npos);
    CHECK(!gLogger.errors.empty() && gLogger.errors.back().find("sm_75") != std::string::npos);

    PluginTensorDesc wrong[3] = {inDesc[0], inDesc[1], {dims({2, 8}), DataType::kINT32, TensorFormat::kLINEAR, 1.0F}};
    CHECK(run->onShapeChange(wrong, 3, &scoresDesc, 1) != 0 && recorder.errors.size() == 2);

    // A one-byte mask never reaches the kernel, which reads four bytes per candidate.
    PluginTensorDesc boolDesc[3] = {inDesc[0], inDesc[1], {vDims, DataType::kBOOL, TensorFormat::kLINEAR, 1.0F}};
    gDevice = FakeDevice{};
    gDevice.major = 8;
    gDevice.minor = 6;
    CHECK(run->enqueue(boolDesc, &scoresDesc, inputs, outputs, nullptr, nullptr) != 0);
    CHECK(gDevice.launches == 0 && recorder.errors.size() == 3);
    CHECK(recorder.errors.size() == 3 && recorder.errors[2].find("int32") != std::string::npos);

    delete attached;
    CHECK(recorder.refs == 0); // the reference taken in attachToContext is released
    delete copy;
    std::printf("%d failed checks\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
