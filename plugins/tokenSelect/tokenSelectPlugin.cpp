#include "tokenSelectPlugin.h"

#include "pluginUtils.h"
#include "tokenSelectKernel.h"

#include <memory>

using namespace nvinfer1;

namespace tokengate::plugin
{
namespace
{
constexpr char const* kNUM_PREFIX = "num_prefix";
constexpr char const* kMIN_KEEP = "min_keep";
constexpr char const* kMAX_TOKENS = "max_tokens"; // TensorRT-side only: the prepared ONNX adds it (README.md)

bool isConstant(IDimensionExpr const* e, int64_t value)
{
    return e != nullptr && e->isConstant() && e->getConstantValue() == value;
}
} // namespace

TokenSelectPlugin::TokenSelectPlugin(int32_t numPrefix, int32_t minKeep, int32_t maxTokens)
    : mNumPrefix(numPrefix)
    , mMinKeep(minKeep)
    , mMaxTokens(maxTokens)
{
    TOKENGATE_CHECK_ARG(numPrefix >= 1, "num_prefix must be >= 1 (the class token), got " << numPrefix);
    TOKENGATE_CHECK_ARG(minKeep >= 1, "min_keep must be >= 1, got " << minKeep);
    TOKENGATE_CHECK_ARG(maxTokens == 0 || maxTokens >= numPrefix,
        "max_tokens must be 0 (unset) or >= num_prefix=" << numPrefix << ", got " << maxTokens);
    initFields();
}

TokenSelectPlugin::TokenSelectPlugin(TokenSelectPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mNumPrefix(other.mNumPrefix)
    , mMinKeep(other.mMinKeep)
    , mMaxTokens(other.mMaxTokens)
    , mErrorRecorder(other.mErrorRecorder)
{
    initFields();
}

void TokenSelectPlugin::initFields()
{
    mFields = {PluginField(kNUM_PREFIX, &mNumPrefix, PluginFieldType::kINT32, 1),
        PluginField(kMIN_KEEP, &mMinKeep, PluginFieldType::kINT32, 1),
        PluginField(kMAX_TOKENS, &mMaxTokens, PluginFieldType::kINT32, 1)};
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    mMetadata = std::string(kNUM_PREFIX) + "=" + std::to_string(mNumPrefix) + " " + kMIN_KEEP + "="
        + std::to_string(mMinKeep) + " " + kMAX_TOKENS + "=" + std::to_string(mMaxTokens);
}

IPluginCapability* TokenSelectPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::getCapabilityInterface", static_cast<IPluginCapability*>(nullptr),
        [&]() -> IPluginCapability* {
            switch (type)
            {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
            }
            TOKENGATE_CHECK_ARG(false, "unknown capability type " << static_cast<int32_t>(type));
            return nullptr;
        });
}

IPluginV3* TokenSelectPlugin::clone() noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::clone", static_cast<IPluginV3*>(nullptr),
        [&]() -> IPluginV3* { return std::make_unique<TokenSelectPlugin>(*this).release(); });
}

char const* TokenSelectPlugin::getPluginName() const noexcept
{
    return kTOKEN_SELECT_NAME;
}

char const* TokenSelectPlugin::getPluginVersion() const noexcept
{
    return kTOKEN_SELECT_VERSION;
}

char const* TokenSelectPlugin::getPluginNamespace() const noexcept
{
    return kTOKEN_SELECT_NAMESPACE;
}

int32_t TokenSelectPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t TokenSelectPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::configurePlugin", -1, [&]() {
        TOKENGATE_CHECK_ARG(in != nullptr && out != nullptr, "null tensor descriptions");
        TOKENGATE_CHECK_ARG(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 3 inputs (x, scores, threshold) and 3 outputs, got " << nbInputs << " and " << nbOutputs);
        return 0;
    });
}

int32_t TokenSelectPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::getOutputDataTypes", -1, [&]() {
        TOKENGATE_CHECK_ARG(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS,
            "expected 3 inputs and 3 outputs, got " << nbInputs << " and " << nbOutputs);
        DataType const type = inputTypes[kIN_X];
        TOKENGATE_CHECK_ARG(type == DataType::kFLOAT || type == DataType::kHALF,
            "x must be float32 or float16, got DataType " << static_cast<int32_t>(type));
        TOKENGATE_CHECK_ARG(inputTypes[kIN_SCORES] == type && inputTypes[kIN_THRESHOLD] == type,
            "x, scores and threshold must share one type");
        outputTypes[kOUT_Y] = type;
        outputTypes[kOUT_LENGTHS] = DataType::kINT32;
        outputTypes[kOUT_K] = DataType::kINT32; // size tensors are int32 scalars
        return 0;
    });
}

int32_t TokenSelectPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    (void) shapeInputs;
    return guarded(mErrorRecorder, "TokenSelect::getOutputShapes", -1, [&]() {
        TOKENGATE_CHECK_ARG(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS && nbShapeInputs == 0,
            "expected 3 inputs, no shape inputs and 3 outputs");
        DimsExprs const& x = inputs[kIN_X];
        DimsExprs const& scores = inputs[kIN_SCORES];
        DimsExprs const& threshold = inputs[kIN_THRESHOLD];
        TOKENGATE_CHECK_ARG(x.nbDims == 3, "x must be [B, N, C], got rank " << x.nbDims);
        TOKENGATE_CHECK_ARG(scores.nbDims == 2, "scores must be [B, N - num_prefix], got rank " << scores.nbDims);
        TOKENGATE_CHECK_ARG(threshold.nbDims == 0 || (threshold.nbDims == 1 && isConstant(threshold.d[0], 1)),
            "threshold must be a scalar");
        // K's tuning value and upper bound must not depend on a size tensor (declareSizeTensor's contract), and from
        // the second TokenSelect on x's N *is* the previous stage's K. So both are constants: N itself when it is
        // known at build time (the first stage), else max_tokens (the model's token count, which no stage exceeds).
        int64_t upper = mMaxTokens;
        if (x.d[1]->isConstant())
        {
            int64_t const n = x.d[1]->getConstantValue();
            TOKENGATE_CHECK_ARG(n >= mNumPrefix, "x has " << n << " tokens, fewer than num_prefix=" << mNumPrefix);
            TOKENGATE_CHECK_ARG(!scores.d[1]->isConstant() || scores.d[1]->getConstantValue() == n - mNumPrefix,
                "scores must have N - num_prefix = " << n - mNumPrefix << " columns, got "
                                                     << scores.d[1]->getConstantValue());
            TOKENGATE_CHECK_ARG(mMaxTokens == 0 || n <= mMaxTokens,
                "x has " << n << " tokens, more than max_tokens=" << mMaxTokens);
            upper = n;
        }
        TOKENGATE_CHECK_ARG(upper > 0,
            "x's token count is not a build-time constant (at a second or later stage it is the previous stage's "
            "data-dependent K), so K's bound must come from the max_tokens attribute, which is missing: parse the "
            "ONNX that plugins/prepare_onnx.py (or tokengate build) writes, which sets it");
        // K lies in [P + min(min_keep, N - P), upper]: TensorRT allocates y for the upper bound and tunes for half the
        // patches kept.
        int64_t const opt = mNumPrefix + (upper - mNumPrefix + 1) / 2;
        IDimensionExpr const* k
            = exprBuilder.declareSizeTensor(kOUT_K, *exprBuilder.constant(opt), *exprBuilder.constant(upper));
        TOKENGATE_CHECK(k != nullptr, ErrorCode::kINTERNAL_ERROR, "declareSizeTensor failed");

        outputs[kOUT_Y].nbDims = 3;
        outputs[kOUT_Y].d[0] = x.d[0];
        outputs[kOUT_Y].d[1] = k;
        outputs[kOUT_Y].d[2] = x.d[2];
        outputs[kOUT_LENGTHS].nbDims = 1;
        outputs[kOUT_LENGTHS].d[0] = x.d[0];
        outputs[kOUT_K].nbDims = 0; // size tensors are 0-D
        return 0;
    });
}

bool TokenSelectPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::supportsFormatCombination", false, [&]() {
        TOKENGATE_CHECK_ARG(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS && pos >= 0 && pos < 6,
            "bad position " << pos);
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        switch (pos)
        {
        case kIN_X: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        case kIN_SCORES:
        case kIN_THRESHOLD:
        case kNB_INPUTS + kOUT_Y: return desc.type == inOut[kIN_X].desc.type;
        default: return desc.type == DataType::kINT32; // lengths and the size tensor K
        }
    });
}

size_t TokenSelectPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const* outputs,
    int32_t nbOutputs) const noexcept
{
    (void) outputs;
    (void) nbOutputs;
    return guarded(mErrorRecorder, "TokenSelect::getWorkspaceSize", size_t{0}, [&]() {
        TOKENGATE_CHECK_ARG(nbInputs == kNB_INPUTS, "expected 3 inputs, got " << nbInputs);
        Dims const& maxX = inputs[kIN_X].max; // the profile's largest B and N bound every call
        // enqueue refuses N > max_tokens, so max_tokens bounds a data-dependent N whatever its max reads.
        int64_t const n = mMaxTokens > 0 && (maxX.d[1] < 0 || maxX.d[1] > mMaxTokens) ? mMaxTokens : maxX.d[1];
        return tokengate_token_select_workspace_size(maxX.d[0], n, mNumPrefix);
    });
}

char const* TokenSelectPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t TokenSelectPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::onShapeChange", -1, [&]() {
        TOKENGATE_CHECK_ARG(in != nullptr && out != nullptr, "null tensor descriptions");
        TOKENGATE_CHECK_ARG(nbInputs == kNB_INPUTS && nbOutputs == kNB_OUTPUTS, "expected 3 inputs and 3 outputs");
        return 0;
    });
}

int32_t TokenSelectPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    (void) outputDesc;
    return guarded(mErrorRecorder, "TokenSelect::enqueue", -1, [&]() {
        Dims const& x = inputDesc[kIN_X].dims;
        Dims const& scores = inputDesc[kIN_SCORES].dims;
        TOKENGATE_CHECK_ARG(x.nbDims == 3 && scores.nbDims == 2, "x must be [B, N, C] and scores [B, N - P]");
        TOKENGATE_CHECK_ARG(scores.d[0] == x.d[0] && scores.d[1] == x.d[1] - mNumPrefix,
            "scores is [" << scores.d[0] << ", " << scores.d[1] << "], expected [" << x.d[0] << ", "
                          << x.d[1] - mNumPrefix << "]");
        // y was allocated for K <= max_tokens: more tokens than that could overrun it.
        TOKENGATE_CHECK_ARG(mMaxTokens == 0 || x.d[1] <= mMaxTokens,
            "x has " << x.d[1] << " tokens, more than max_tokens=" << mMaxTokens << " that y was sized for");
        int32_t const dtype
            = inputDesc[kIN_X].type == DataType::kHALF ? TOKENGATE_DTYPE_FLOAT16 : TOKENGATE_DTYPE_FLOAT32;
        int32_t const status = tokengate_token_select(dtype, inputs[kIN_X], inputs[kIN_SCORES], inputs[kIN_THRESHOLD],
            outputs[kOUT_Y], static_cast<int32_t*>(outputs[kOUT_LENGTHS]), static_cast<int32_t*>(outputs[kOUT_K]),
            workspace, x.d[0], x.d[1], x.d[2], mNumPrefix, mMinKeep, stream);
        TOKENGATE_CHECK(status == TOKENGATE_STATUS_OK, ErrorCode::kFAILED_EXECUTION,
            "kernel launch failed: " << tokengate_status_string(status));
        return 0;
    });
}

IPluginV3* TokenSelectPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    return guarded(mErrorRecorder, "TokenSelect::attachToContext", static_cast<IPluginV3*>(nullptr),
        [&]() -> IPluginV3* {
            auto attached = std::make_unique<TokenSelectPlugin>(*this);
            attached->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
            return attached.release();
        });
}

PluginFieldCollection const* TokenSelectPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldCollection;
}

TokenSelectPluginCreator::TokenSelectPluginCreator()
{
    mFieldNames = {PluginField(kNUM_PREFIX, nullptr, PluginFieldType::kINT32, 1),
        PluginField(kMIN_KEEP, nullptr, PluginFieldType::kINT32, 1),
        PluginField(kMAX_TOKENS, nullptr, PluginFieldType::kINT32, 1)};
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* TokenSelectPluginCreator::getPluginName() const noexcept
{
    return kTOKEN_SELECT_NAME;
}

char const* TokenSelectPluginCreator::getPluginVersion() const noexcept
{
    return kTOKEN_SELECT_VERSION;
}

char const* TokenSelectPluginCreator::getPluginNamespace() const noexcept
{
    return kTOKEN_SELECT_NAMESPACE;
}

PluginFieldCollection const* TokenSelectPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* TokenSelectPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    (void) name;
    (void) phase; // the build and runtime phases read the same fields
    return guarded(nullptr, "TokenSelectCreator::createPlugin", static_cast<IPluginV3*>(nullptr), [&]() -> IPluginV3* {
        PluginFieldParser const fields(fc, "tokengate::TokenSelect", {kNUM_PREFIX, kMIN_KEEP, kMAX_TOKENS});
        int64_t const numPrefix = fields.getInt(kNUM_PREFIX);
        int64_t const minKeep = fields.getInt(kMIN_KEEP);
        int64_t const maxTokens = fields.getInt(kMAX_TOKENS, 0); // optional: a first stage has a constant N
        TOKENGATE_CHECK_ARG(numPrefix >= 1 && numPrefix <= INT32_MAX, "num_prefix must be >= 1, got " << numPrefix);
        TOKENGATE_CHECK_ARG(minKeep >= 1 && minKeep <= INT32_MAX, "min_keep must be >= 1, got " << minKeep);
        TOKENGATE_CHECK_ARG(maxTokens >= 0 && maxTokens <= INT32_MAX, "max_tokens must be >= 0, got " << maxTokens);
        return std::make_unique<TokenSelectPlugin>(
                   static_cast<int32_t>(numPrefix), static_cast<int32_t>(minKeep), static_cast<int32_t>(maxTokens))
            .release();
    });
}

} // namespace tokengate::plugin
