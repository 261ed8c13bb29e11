/*
 * tokengate::TokenSelect v1 as a TensorRT IPluginV3 (see README.md beside this file for the contract).
 *
 * Outputs: y [B, K, C], lengths [B] int32, and K itself as a 0-D int32 size tensor. TensorRT can only learn a
 * data-dependent output extent from a size tensor that the plugin outputs (IExprBuilder::declareSizeTensor takes
 * an output index), so the plugin layer has one more output than the ONNX node's (y, lengths).
 */
#ifndef TOKENGATE_TOKEN_SELECT_PLUGIN_H
#define TOKENGATE_TOKEN_SELECT_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tokengate::plugin
{

constexpr char const* kTOKEN_SELECT_NAME = "TokenSelect";
constexpr char const* kTOKEN_SELECT_VERSION = "1";
constexpr char const* kTOKEN_SELECT_NAMESPACE = "tokengate";

class TokenSelectPlugin : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    static constexpr int32_t kIN_X = 0;
    static constexpr int32_t kIN_SCORES = 1;
    static constexpr int32_t kIN_THRESHOLD = 2;
    static constexpr int32_t kNB_INPUTS = 3;
    static constexpr int32_t kOUT_Y = 0;
    static constexpr int32_t kOUT_LENGTHS = 1;
    static constexpr int32_t kOUT_K = 2; //!< the size tensor
    static constexpr int32_t kNB_OUTPUTS = 3;

    //! maxTokens: the largest token count (prefix included) x can have at this stage, 0 if x's N is a build-time
    //! constant. From the second TokenSelect on, N is the previous stage's data-dependent K, and K's tuning value and
    //! upper bound must not depend on a size tensor, so they come from this constant instead.
    TokenSelectPlugin(int32_t numPrefix, int32_t minKeep, int32_t maxTokens = 0);
    TokenSelectPlugin(TokenSelectPlugin const& other);
    TokenSelectPlugin& operator=(TokenSelectPlugin const&) = delete;
    ~TokenSelectPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void initFields();

    int32_t mNumPrefix;
    int32_t mMinKeep;
    int32_t mMaxTokens; //!< 0: unset
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr}; //!< the execution context's, once attached
    std::vector<nvinfer1::PluginField> mFields;         //!< point at the members above: rebuilt on copy
    nvinfer1::PluginFieldCollection mFieldCollection{};
    std::string mMetadata;
};

class TokenSelectPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    TokenSelectPluginCreator();
    ~TokenSelectPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace tokengate::plugin

#endif // TOKENGATE_TOKEN_SELECT_PLUGIN_H
