#include "pluginUtils.h"

#include <atomic>
#include <cstring>
#include <iostream>

namespace tokengate::plugin
{
namespace
{
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
            return;
        }
        std::cerr << "[tokengate] " << message << std::endl;
    }
    catch (...)
    {
        // Logging must never throw across the plugin ABI; there is nowhere left to report to.
    }
}

void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, char const* where,
    char const* what) noexcept
{
    try
    {
        std::string const message = std::string(where) + ": " + what;
        if (recorder != nullptr)
        {
            recorder->reportError(code, message.c_str());
            return;
        }
        logMessage(nvinfer1::ILogger::Severity::kERROR, message);
    }
    catch (...)
    {
        // Out of memory while formatting: nothing more can be done without throwing.
    }
}

PluginFieldParser::PluginFieldParser(nvinfer1::PluginFieldCollection const* fields, char const* pluginName,
    std::initializer_list<char const*> knownNames)
    : mFields(fields)
    , mPluginName(pluginName)
{
    TOKENGATE_CHECK_ARG(fields != nullptr, mPluginName << ": no plugin fields given");
    TOKENGATE_CHECK_ARG(fields->nbFields == 0 || fields->fields != nullptr, mPluginName << ": null plugin fields");
    for (int32_t i = 0; i < fields->nbFields; ++i)
    {
        char const* name = fields->fields[i].name;
        bool known = false;
        for (char const* knownName : knownNames)
        {
            known = known || (name != nullptr && std::strcmp(name, knownName) == 0);
        }
        if (!known)
        {
            logMessage(nvinfer1::ILogger::Severity::kWARNING,
                mPluginName + ": ignoring unknown attribute '" + (name != nullptr ? name : "(null)") + "'");
        }
    }
}

nvinfer1::PluginField const* PluginFieldParser::find(char const* name) const
{
    for (int32_t i = 0; i < mFields->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = mFields->fields[i];
        if (field.name != nullptr && std::strcmp(field.name, name) == 0)
        {
            return &field;
        }
    }
    return nullptr;
}

int64_t PluginFieldParser::getInt(char const* name, int64_t fallback) const
{
    return find(name) != nullptr ? getInt(name) : fallback;
}

int64_t PluginFieldParser::getInt(char const* name) const
{
    using nvinfer1::PluginFieldType;
    nvinfer1::PluginField const* field = find(name);
    TOKENGATE_CHECK_ARG(field != nullptr, mPluginName << ": required attribute '" << name << "' is missing");
    TOKENGATE_CHECK_ARG(field->length == 1 && field->data != nullptr,
        mPluginName << ": attribute '" << name << "' must be one integer, got " << field->length << " values");
    switch (field->type)
    {
    case PluginFieldType::kINT8: return *static_cast<int8_t const*>(field->data);
    case PluginFieldType::kINT16: return *static_cast<int16_t const*>(field->data);
    case PluginFieldType::kINT32: return *static_cast<int32_t const*>(field->data);
    case PluginFieldType::kINT64: return *static_cast<int64_t const*>(field->data);
    default: break;
    }
    TOKENGATE_CHECK_ARG(false,
        mPluginName << ": attribute '" << name << "' must be an integer field, got PluginFieldType "
                    << static_cast<int32_t>(field->type));
    return 0;
}

} // namespace tokengate::plugin
