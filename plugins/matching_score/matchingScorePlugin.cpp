// TensorRT IPluginV3 for onerank::MatchingScore. Every TensorRT entry point is noexcept: failures are logged
// (TensorRT's logger; at runtime also the execution context's error recorder) and returned as non-zero codes.
#include "matchingScorePlugin.h"

#include "generated/matchingScoreSpec.h"
#include "matchingScoreKernel.h"

#include <cuda_fp16.h>

#include <cstdio>

namespace onerank
{
namespace plugin
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

namespace
{

bool toDataType(spec::ElementType type, DataType& out) noexcept
{
    switch (type)
    {
    case spec::ElementType::kFLOAT: out = DataType::kFLOAT; return true;
    case spec::ElementType::kFLOAT16: out = DataType::kHALF; return true;
    case spec::ElementType::kINT32: out = DataType::kINT32; return true;
    }
    return false;
}

//! The spec of tensor `pos`, counting inputs then outputs (TensorRT's inOut order).
struct TensorSpec
{
    spec::ElementType const* types;
    int32_t nbTypes;
    int32_t rank;
};

TensorSpec tensorSpec(int32_t pos) noexcept
{
    switch (pos)
    {
    case spec::kInputZ: return {spec::kTypesZ, spec::kNbTypesZ, spec::kRankZ};
    case spec::kInputR: return {spec::kTypesR, spec::kNbTypesR, spec::kRankR};
    case spec::kInputValid: return {spec::kTypesValid, spec::kNbTypesValid, spec::kRankValid};
    case spec::kNbInputs + spec::kOutputScores: return {spec::kTypesScores, spec::kNbTypesScores, spec::kRankScores};
    default: return {nullptr, 0, -1};
    }
}

bool typeAllowed(int32_t pos, DataType type) noexcept
{
    TensorSpec const s = tensorSpec(pos);
    for (int32_t i = 0; i < s.nbTypes; ++i)
    {
        DataType allowed{};
        if (toDataType(s.types[i], allowed) && allowed == type)
        {
            return true;
        }
    }
    return false;
}

//! z and valid must agree with r on every shared axis; unknown (-1) build-time dims are skipped.
bool shapesAgree(Dims const& z, Dims const& r, Dims const& valid, char* why, size_t whySize) noexcept
{
    if (z.nbDims != spec::kRankZ || r.nbDims != spec::kRankR || valid.nbDims != spec::kRankValid)
    {
        std::snprintf(why, whySize, "ranks z %d, r %d, valid %d; expected %d, %d, %d", z.nbDims, r.nbDims,
            valid.nbDims, spec::kRankZ, spec::kRankR, spec::kRankValid);
        return false;
    }
    auto agree = [&](Dims const& t, int32_t const* dimsInR, int32_t rank, char const* name) {
        for (int32_t i = 0; i < rank; ++i)
        {
            int64_t const a = t.d[i];
            int64_t const b = r.d[dimsInR[i]];
            if (a >= 0 && b >= 0 && a != b)
            {
                std::snprintf(why, whySize, "%s dim %d is %lld but r dim %d is %lld", name, i,
                    static_cast<long long>(a), dimsInR[i], static_cast<long long>(b));
                return false;
            }
        }
        return true;
    };
    return agree(z, spec::kZDimsInR, spec::kRankZ, "z") && agree(valid, spec::kValidDimsInR, spec::kRankValid, "valid");
}

} // namespace

// ----- plugin ------------------------------------------------------------------------------------------------

MatchingScorePlugin::MatchingScorePlugin(float scale) noexcept
    : mScale(scale)
{
}

// A copy never shares the error recorder: only attachToContext() gives a clone one (with its own reference).
MatchingScorePlugin::MatchingScorePlugin(MatchingScorePlugin const& other) noexcept
    : nvinfer1::IPluginV3(other)
    , nvinfer1::IPluginV3OneCore(other)
    , nvinfer1::IPluginV3OneBuild(other)
    , nvinfer1::IPluginV3OneRuntime(other)
    , mScale(other.mScale)
{
}

MatchingScorePlugin::~MatchingScorePlugin() noexcept
{
    setErrorRecorder(nullptr);
}

void MatchingScorePlugin::setErrorRecorder(nvinfer1::IErrorRecorder* recorder) noexcept
{
    if (recorder != nullptr)
    {
        recorder->incRefCount();
    }
    if (mErrorRecorder != nullptr)
    {
        mErrorRecorder->decRefCount();
    }
    mErrorRecorder = recorder;
}

void MatchingScorePlugin::reportError(char const* message) const noexcept
{
    char text[400];
    std::snprintf(text, sizeof(text), "%s::%s: %s", spec::kPluginNamespace, spec::kPluginName, message);
    logMessage(Severity::kERROR, "%s", text);
    if (mErrorRecorder != nullptr)
    {
        mErrorRecorder->reportError(nvinfer1::ErrorCode::kFAILED_EXECUTION, text);
    }
}

nvinfer1::IPluginCapability* MatchingScorePlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* MatchingScorePlugin::clone() noexcept
{
    try
    {
        return new MatchingScorePlugin(*this);
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "%s: clone failed (out of memory)", spec::kPluginName);
        return nullptr;
    }
}

char const* MatchingScorePlugin::getPluginName() const noexcept
{
    return spec::kPluginName;
}

char const* MatchingScorePlugin::getPluginVersion() const noexcept
{
    return spec::kPluginVersion;
}

char const* MatchingScorePlugin::getPluginNamespace() const noexcept
{
    return spec::kPluginNamespace;
}

int32_t MatchingScorePlugin::getNbOutputs() const noexcept
{
    return spec::kNbOutputs;
}

int32_t MatchingScorePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != spec::kNbOutputs || nbInputs != spec::kNbInputs
        || !typeAllowed(spec::kInputZ, inputTypes[spec::kInputZ]) || inputTypes[spec::kInputR] != inputTypes[spec::kInputZ])
    {
        logMessage(Severity::kERROR, "%s: z and r must both be one of the spec's float types", spec::kPluginName);
        return -1;
    }
    if (!typeAllowed(spec::kInputValid, inputTypes[spec::kInputValid]))
    {
        // TensorRT plugins take no kBOOL input: an ONNX file exported before version 2 has a BOOL mask.
        logMessage(Severity::kERROR, "%s: valid must be int32 (nonzero = valid); re-export the ONNX model",
            spec::kPluginName);
        return -1;
    }
    return toDataType(spec::kTypesScores[0], outputTypes[spec::kOutputScores]) ? 0 : -1;
}

int32_t MatchingScorePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /* shapeInputs */, int32_t /* nbShapeInputs */, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /* exprBuilder */) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != spec::kNbInputs || nbOutputs != spec::kNbOutputs
        || inputs[spec::kInputR].nbDims != spec::kRankR)
    {
        logMessage(Severity::kERROR, "%s: expected %d inputs with r of rank %d", spec::kPluginName, spec::kNbInputs,
            spec::kRankR);
        return -1;
    }
    nvinfer1::DimsExprs& scores = outputs[spec::kOutputScores];
    scores.nbDims = spec::kRankScores;
    for (int32_t i = 0; i < spec::kRankScores; ++i)
    {
        scores.d[i] = inputs[spec::kInputR].d[spec::kScoresDimsInR[i]];
    }
    return 0;
}

bool MatchingScorePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != spec::kNbInputs || nbOutputs != spec::kNbOutputs || pos < 0
        || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR || !typeAllowed(pos, desc.type))
    {
        return false;
    }
    // One kernel image per input type: r must have z's type (TensorRT asks pos in order, so z is decided).
    return pos != spec::kInputR || desc.type == inOut[spec::kInputZ].desc.type;
}

int32_t MatchingScorePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != spec::kNbInputs || nbOutputs != spec::kNbOutputs)
    {
        logMessage(Severity::kERROR, "%s: configurePlugin got %d inputs, %d outputs", spec::kPluginName, nbInputs,
            nbOutputs);
        return -1;
    }
    if (!typeAllowed(spec::kInputValid, in[spec::kInputValid].desc.type))
    {
        logMessage(Severity::kERROR, "%s: valid must be int32 (nonzero = valid)", spec::kPluginName);
        return -1;
    }
    char why[160];
    if (!shapesAgree(in[spec::kInputZ].desc.dims, in[spec::kInputR].desc.dims, in[spec::kInputValid].desc.dims, why,
            sizeof(why)))
    {
        logMessage(Severity::kERROR, "%s: %s", spec::kPluginName, why);
        return -1;
    }
    return 0;
}

size_t MatchingScorePlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* /* inputs */,
    int32_t /* nbInputs */, nvinfer1::DynamicPluginTensorDesc const* /* outputs */,
    int32_t /* nbOutputs */) const noexcept
{
    return 0;
}

int32_t MatchingScorePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    char why[160];
    if (in == nullptr || out == nullptr || nbInputs != spec::kNbInputs || nbOutputs != spec::kNbOutputs)
    {
        reportError("onShapeChange got the wrong number of tensors");
        return -1;
    }
    if (!shapesAgree(in[spec::kInputZ].dims, in[spec::kInputR].dims, in[spec::kInputValid].dims, why, sizeof(why)))
    {
        reportError(why);
        return -1;
    }
    return 0;
}

int32_t MatchingScorePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /* outputDesc */, void const* const* inputs, void* const* outputs,
    void* /* workspace */, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        reportError("enqueue called without tensors");
        return -1;
    }
    Dims const& r = inputDesc[spec::kInputR].dims;
    if (r.nbDims != spec::kRankR)
    {
        reportError("r has the wrong rank");
        return -1;
    }
    MatchingScoreShape const shape{r.d[spec::kBatchDimInR], r.d[spec::kNumCandidatesDimInR],
        r.d[spec::kNumTasksDimInR], r.d[spec::kDModelDimInR]};
    if (!typeAllowed(spec::kInputValid, inputDesc[spec::kInputValid].type))
    {
        reportError("valid must be int32 (nonzero = valid)"); // the kernel reads 4 bytes per candidate
        return -1;
    }
    auto const* valid = static_cast<int32_t const*>(inputs[spec::kInputValid]);
    auto* scores = static_cast<float*>(outputs[spec::kOutputScores]);
    LaunchMessage message{};
    CUresult status = CUDA_ERROR_INVALID_VALUE;
    switch (inputDesc[spec::kInputZ].type)
    {
    case DataType::kFLOAT:
        status = launchMatchingScore(static_cast<float const*>(inputs[spec::kInputZ]),
            static_cast<float const*>(inputs[spec::kInputR]), valid, scores, shape, mScale, stream, message);
        break;
    case DataType::kHALF:
        status = launchMatchingScore(static_cast<__half const*>(inputs[spec::kInputZ]),
            static_cast<__half const*>(inputs[spec::kInputR]), valid, scores, shape, mScale, stream, message);
        break;
    default: std::snprintf(message.text, sizeof(message.text), "unsupported input type"); break;
    }
    if (status != CUDA_SUCCESS)
    {
        reportError(message.text);
        return static_cast<int32_t>(status);
    }
    if (message.text[0] != '\0') // the first launch in a context says which image it loaded
    {
        logMessage(Severity::kINFO, "%s: %s", spec::kPluginName, message.text);
    }
    return 0;
}

nvinfer1::IPluginV3* MatchingScorePlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    try
    {
        auto* attached = new MatchingScorePlugin(*this);
        if (context != nullptr)
        {
            attached->setErrorRecorder(context->getErrorRecorder());
        }
        return attached;
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "%s: attachToContext failed (out of memory)", spec::kPluginName);
        return nullptr;
    }
}

nvinfer1::PluginFieldCollection const* MatchingScorePlugin::getFieldsToSerialize() noexcept
{
    // Rebuilt on each call so the field points at this object's mScale, not a copied-from one.
    mSerializedFields[0] = PluginField(spec::kFieldScale, &mScale, PluginFieldType::kFLOAT32, 1);
    mSerialized.nbFields = static_cast<int32_t>(mSerializedFields.size());
    mSerialized.fields = mSerializedFields.data();
    return &mSerialized;
}

} // namespace plugin
} // namespace onerank
