// The MatchingScore plugin creator: TensorRT (the ONNX parser, or a plan being deserialized) asks it for plugin
// objects, passing the node's attributes / the serialized fields as PluginFields named by the spec header.
#include "matchingScorePlugin.h"

#include "generated/matchingScoreSpec.h"

#include <cmath>
#include <cstring>

namespace onerank
{
namespace plugin
{

using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

static_assert(spec::kNbFields == 2, "MatchingScore fields changed: update the creator");

MatchingScorePluginCreator::MatchingScorePluginCreator() noexcept
    : mFields{{PluginField(spec::kFieldScale, nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField(spec::kFieldPluginNamespace, nullptr, PluginFieldType::kCHAR, 0)}}
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginV3* MatchingScorePluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    char const* layer = name != nullptr ? name : "?";
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        logMessage(Severity::kERROR, "%s %s: no plugin fields", spec::kPluginName, layer);
        return nullptr;
    }
    bool haveScale = false;
    float scale = 0.0F;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        if (field.name == nullptr || field.data == nullptr)
        {
            continue;
        }
        if (std::strcmp(field.name, spec::kFieldScale) == 0 && field.length >= 1)
        {
            if (field.type == PluginFieldType::kFLOAT32)
            {
                scale = *static_cast<float const*>(field.data);
            }
            else if (field.type == PluginFieldType::kFLOAT64)
            {
                scale = static_cast<float>(*static_cast<double const*>(field.data));
            }
            else
            {
                logMessage(Severity::kERROR, "%s %s: field %s must be kFLOAT32", spec::kPluginName, layer,
                    spec::kFieldScale);
                return nullptr;
            }
            haveScale = true;
        }
        else if (std::strcmp(field.name, spec::kFieldPluginNamespace) == 0)
        {
            // The ONNX parser passes the string with its NUL (length = size + 1); Python callers may not.
            auto const* text = static_cast<char const*>(field.data);
            size_t length = field.length > 0 ? static_cast<size_t>(field.length) : 0;
            while (length > 0 && text[length - 1] == '\0')
            {
                --length;
            }
            if (field.type != PluginFieldType::kCHAR || length != std::strlen(spec::kPluginNamespace)
                || std::strncmp(text, spec::kPluginNamespace, length) != 0)
            {
                logMessage(Severity::kERROR, "%s %s: field %s does not name this library's namespace %s",
                    spec::kPluginName, layer, spec::kFieldPluginNamespace, spec::kPluginNamespace);
                return nullptr;
            }
        }
        else
        {
            logMessage(Severity::kWARNING, "%s %s: ignoring unknown field %s", spec::kPluginName, layer, field.name);
        }
    }
    if (!haveScale || !std::isfinite(scale))
    {
        logMessage(Severity::kERROR, "%s %s: needs a finite float field %s", spec::kPluginName, layer,
            spec::kFieldScale);
        return nullptr;
    }
    try
    {
        return new MatchingScorePlugin(scale);
    }
    catch (...)
    {
        logMessage(Severity::kERROR, "%s %s: out of memory", spec::kPluginName, layer);
        return nullptr;
    }
}

nvinfer1::PluginFieldCollection const* MatchingScorePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* MatchingScorePluginCreator::getPluginName() const noexcept
{
    return spec::kPluginName;
}

char const* MatchingScorePluginCreator::getPluginVersion() const noexcept
{
    return spec::kPluginVersion;
}

char const* MatchingScorePluginCreator::getPluginNamespace() const noexcept
{
    return spec::kPluginNamespace;
}

} // namespace plugin
} // namespace onerank
