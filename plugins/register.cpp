/*
 * How TensorRT finds the TokenGate plugin creators. Two mutually exclusive ways, chosen at compile time:
 *
 * - Default (libtokengate_plugins.so): the plugin-library entry points getCreators/setLoggerFinder, looked up by
 *   IPluginRegistry::loadLibrary, `trtexec --dynamicPlugins` and `--setPluginsToSerialize`. Needs no libnvinfer.
 * - TOKENGATE_STATIC_REGISTRATION (the tokengate_plugins_static objects, linked into an application together with
 *   libnvinfer): a REGISTER_TENSORRT_PLUGIN-style static object registers the creator while the program starts.
 *
 * Never both in one library: loadLibrary fails when a creator it loads is already registered, and static
 * registration would have done exactly that when the library was opened.
 */
#include "pluginUtils.h"
#include "tokenSelectPlugin.h"

#include <NvInferRuntime.h>

using tokengate::plugin::TokenSelectPluginCreator;

#ifdef TOKENGATE_STATIC_REGISTRATION

namespace
{
//! Static registration gets no logger finder from TensorRT: route plugin logs to libnvinfer's own logger.
class NvInferLoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return getLogger();
    }
};

//! REGISTER_TENSORRT_PLUGIN's registrar, but registering under the creator's own namespace: the macro passes ""
//! (fine for TensorRT's un-namespaced plugins), while TensorRT's Python plugin layer registers V3 creators under
//! their namespace, which is where the ONNX parser and deserialization look them up.
class StaticRegistrar
{
public:
    StaticRegistrar()
    {
        tokengate::plugin::setLoggerFinder(&mLoggerFinder);
        if (!getPluginRegistry()->registerCreator(mCreator, mCreator.getPluginNamespace()))
        {
            tokengate::plugin::logMessage(nvinfer1::ILogger::Severity::kWARNING,
                "tokengate::TokenSelect v1 was already registered; keeping the earlier creator");
        }
    }

private:
    NvInferLoggerFinder mLoggerFinder;
    TokenSelectPluginCreator mCreator;
};

StaticRegistrar const gStaticRegistrar;
} // namespace

#else

// TENSORRTAPI only exports when TensorRT builds itself, and this library hides everything by default.
#define TOKENGATE_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" TOKENGATE_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    tokengate::plugin::setLoggerFinder(finder);
}

extern "C" TOKENGATE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static TokenSelectPluginCreator sTokenSelectCreator;
    static nvinfer1::IPluginCreatorInterface* const kCREATORS[] = {&sTokenSelectCreator};
    nbCreators = static_cast<int32_t>(sizeof(kCREATORS) / sizeof(kCREATORS[0]));
    return kCREATORS;
}

#endif
