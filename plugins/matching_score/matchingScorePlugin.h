// TensorRT IPluginV3 for onerank::MatchingScore: valid ? sigmoid(scale * <z_k, r_k^i>) : 0, fp32 out.
// Name, namespace, version, fields, tensor positions, ranks and types come from generated/matchingScoreSpec.h,
// which is rendered from MATCHING_SCORE in src/onerank_export/export/custom_op.py.
#pragma once

#include "NvInferRuntime.h"
#include "matchingScoreKernel.h"

#include <array>

namespace onerank
{
namespace plugin
{

class MatchingScorePlugin final : public nvinfer1::IPluginV3,
                                  public nvinfer1::IPluginV3OneCore,
                                  public nvinfer1::IPluginV3OneBuild,
                                  public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit MatchingScorePlugin(float scale) noexcept;
    MatchingScorePlugin(MatchingScorePlugin const& other) noexcept;
    MatchingScorePlugin& operator=(MatchingScorePlugin const&) = delete;
    ~MatchingScorePlugin() noexcept override;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Logs through TensorRT's logger and, at runtime, the execution context's error recorder.
    void reportError(char const* message) const noexcept;
    void setErrorRecorder(nvinfer1::IErrorRecorder* recorder) noexcept;
    //! Loads the kernels for `type` into the current CUDA context unless they are there already.
    int32_t prepareKernels(nvinfer1::DataType type) noexcept;

    float mScale;
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr}; // owned reference (incRefCount) once attached
    LoadedKernels mKernels{}; // this object's own modules: never copied, unloaded by the destructor
    std::array<nvinfer1::PluginField, 1> mSerializedFields{};
    nvinfer1::PluginFieldCollection mSerialized{};
};

class MatchingScorePluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    MatchingScorePluginCreator() noexcept;
    ~MatchingScorePluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::array<nvinfer1::PluginField, 2> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! The logger TensorRT handed to this library: getLogger() for the statically registered library,
//! the ILoggerFinder passed to setLoggerFinder() for the dynamically loaded one. May return nullptr.
nvinfer1::ILogger* findLogger() noexcept;

//! printf-style message to findLogger(); silently dropped when there is no logger. Never throws.
void logMessage(nvinfer1::ILogger::Severity severity, char const* format, ...) noexcept
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

} // namespace plugin
} // namespace onerank
