// How TensorRT finds the MatchingScore creator. One source, built twice (CMakeLists.txt):
//
//  ONERANK_STATIC_REGISTRATION=1 -> libonerank_plugins.so: registers the creator with getPluginRegistry() when
//      the library is loaded (dlopen / LD_PRELOAD / ctypes.CDLL, trtexec --staticPlugins, Triton's
//      --backend-config=tensorrt,plugins=...). Links libnvinfer.
//  ONERANK_STATIC_REGISTRATION=0 -> libonerank_plugins_dynamic.so: exports setLoggerFinder() and getCreators(),
//      the entry points of IPluginRegistry::loadLibrary (Python registry.load_library, trtexec --dynamicPlugins,
//      plugins serialized into a plan). Does not link libnvinfer.
//
// One library cannot do both: loadLibrary "will fail and return nullptr if any of the plugins are already
// registered" (NvInferRuntimeCommon.h), and a static registrar would have registered it during the dlopen.
#include "matchingScorePlugin.h"

#include "generated/matchingScoreSpec.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>

#ifndef ONERANK_STATIC_REGISTRATION
#error "build with -DONERANK_STATIC_REGISTRATION=0 or 1 (see CMakeLists.txt)"
#endif

#define ONERANK_PLUGIN_EXPORT __attribute__((visibility("default")))

namespace onerank
{
namespace plugin
{
void logMessage(nvinfer1::ILogger::Severity severity, char const* format, ...) noexcept
{
    nvinfer1::ILogger* logger = findLogger();
    if (logger == nullptr)
    {
        return;
    }
    char text[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof(text), format, args);
    va_end(args);
    logger->log(severity, text);
}

namespace
{
MatchingScorePluginCreator& creator() noexcept
{
    static MatchingScorePluginCreator instance;
    return instance;
}
} // namespace

#if ONERANK_STATIC_REGISTRATION

nvinfer1::ILogger* findLogger() noexcept
{
    return getLogger(); // TensorRT's global logger (libnvinfer)
}

namespace
{
// REGISTER_TENSORRT_PLUGIN would register under namespace ""; the ONNX parser looks the creator up by the
// node's plugin_namespace, so register under the spec's namespace explicitly.
struct RegisterOnLoad
{
    RegisterOnLoad() noexcept
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(creator(), spec::kPluginNamespace))
        {
            logMessage(nvinfer1::ILogger::Severity::kERROR, "%s::%s version %s: plugin registration failed",
                spec::kPluginNamespace, spec::kPluginName, spec::kPluginVersion);
        }
    }
};
RegisterOnLoad const gRegisterOnLoad{};
} // namespace

#else

namespace
{
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
} // namespace

nvinfer1::ILogger* findLogger() noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    return finder != nullptr ? finder->findLogger() : nullptr;
}

#endif

} // namespace plugin
} // namespace onerank

#if !ONERANK_STATIC_REGISTRATION

extern "C" ONERANK_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    onerank::plugin::gLoggerFinder.store(finder);
}

extern "C" ONERANK_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&onerank::plugin::creator()};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

#endif
