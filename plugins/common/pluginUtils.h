/*
 * The one helper every TokenGate plugin shares: checks that throw, one attribute parser, and the guard that turns
 * exceptions into ErrorRecorder/logger reports at the noexcept ABI boundary (exceptions never cross into TensorRT).
 */
#ifndef TOKENGATE_PLUGIN_UTILS_H
#define TOKENGATE_PLUGIN_UTILS_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>

namespace tokengate::plugin
{

//! A failed check: carries the ErrorCode it should be reported with.
class PluginError : public std::runtime_error
{
public:
    PluginError(nvinfer1::ErrorCode code, std::string const& message)
        : std::runtime_error(message)
        , mCode(code)
    {
    }

    nvinfer1::ErrorCode code() const noexcept
    {
        return mCode;
    }

private:
    nvinfer1::ErrorCode mCode;
};

//! Throws PluginError(code, message) when `condition` is false; the message is only built on failure.
#define TOKENGATE_CHECK(condition, code, message)                                                                      \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(condition))                                                                                              \
        {                                                                                                              \
            std::ostringstream tokengateCheckStream_;                                                                  \
            tokengateCheckStream_ << message;                                                                          \
            throw ::tokengate::plugin::PluginError(code, tokengateCheckStream_.str());                                 \
        }                                                                                                              \
    } while (false)

#define TOKENGATE_CHECK_ARG(condition, message)                                                                        \
    TOKENGATE_CHECK(condition, ::nvinfer1::ErrorCode::kINVALID_ARGUMENT, message)

//! Where log messages go: TensorRT hands the library a logger finder when it loads it (setLoggerFinder entry point).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Logs through TensorRT's logger when one is known, else to stderr (so a message is never lost).
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

//! Reports through the execution context's ErrorRecorder when the plugin has one, else logs an error.
void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, char const* where,
    char const* what) noexcept;

//! Runs `body` and returns its result; any exception is reported (with `where`) and `onError` is returned instead.
template <typename R, typename F>
R guarded(nvinfer1::IErrorRecorder* recorder, char const* where, R onError, F&& body) noexcept
{
    try
    {
        return body();
    }
    catch (PluginError const& e)
    {
        reportError(recorder, e.code(), where, e.what());
    }
    catch (std::exception const& e)
    {
        reportError(recorder, nvinfer1::ErrorCode::kINTERNAL_ERROR, where, e.what());
    }
    catch (...)
    {
        reportError(recorder, nvinfer1::ErrorCode::kUNSPECIFIED_ERROR, where, "unknown exception");
    }
    return onError;
}

//! Reads plugin attributes from a PluginFieldCollection, whatever integer width the caller used
//! (the ONNX parser passes kINT32, the Python API often kINT64). Unknown fields are warned about, not fatal.
class PluginFieldParser
{
public:
    PluginFieldParser(nvinfer1::PluginFieldCollection const* fields, char const* pluginName,
        std::initializer_list<char const*> knownNames);

    //! The scalar integer field `name`; throws a PluginError naming the field when it is missing or malformed.
    int64_t getInt(char const* name) const;

    //! The optional scalar integer field `name`, or `fallback` when it is absent; malformed still throws.
    int64_t getInt(char const* name, int64_t fallback) const;

private:
    nvinfer1::PluginField const* find(char const* name) const;

    nvinfer1::PluginFieldCollection const* mFields;
    std::string mPluginName;
};

} // namespace tokengate::plugin

#endif // TOKENGATE_PLUGIN_UTILS_H
