/*
 * tokengate_plugin_selftest LIBRARY: opens libtokengate_plugins.so as IPluginRegistry::loadLibrary does (dlopen,
 * setLoggerFinder, getCreators) and drives TokenSelect through the calls TensorRT makes while building and running
 * an engine, with stand-ins for IExprBuilder, ILoggerFinder, IErrorRecorder and IPluginResourceContext.
 * The stand-in IExprBuilder enforces declareSizeTensor's rule: a tuning value or upper bound derived from a size
 * tensor is refused, so a chain of TokenSelect layers (each stage's N is the previous stage's K) is checked too.
 * Needs TensorRT headers only, no libnvinfer. enqueue runs the real kernels when a GPU is present (fp32 and fp16,
 * C up to 384, more than 256 patches, a 3-stage chain; checked against a host reference); without one it checks that
 * the failed launch is reported, not thrown.
 */
#include "tokenSelectKernel.h"

#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gPassed = 0;
int gFailed = 0;

void expect(bool ok, char const* what, int line)
{
    ++(ok ? gPassed : gFailed);
    if (!ok)
    {
        std::cerr << "FAILED line " << line << ": " << what << std::endl;
    }
}
#define EXPECT(condition) expect((condition), #condition, __LINE__)

bool contains(std::string const& text, char const* part)
{
    return text.find(part) != std::string::npos;
}

class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        (severity <= Severity::kERROR ? errors : warnings) += std::string(msg) + "\n";
    }
    std::string errors;
    std::string warnings;
};

class LoggerFinder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &logger;
    }
    CapturingLogger logger;
};

class Recorder : public IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(mErrors.size());
    }
    ErrorCode getErrorCode(int32_t i) const noexcept override
    {
        return mErrors.at(i).first;
    }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override
    {
        return mErrors.at(i).second.c_str();
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        mErrors.clear();
    }
    bool reportError(ErrorCode code, ErrorDesc desc) noexcept override
    {
        mErrors.emplace_back(code, desc);
        return true;
    }
    RefCount incRefCount() noexcept override
    {
        return 1;
    }
    RefCount decRefCount() noexcept override
    {
        return 0;
    }

private:
    std::vector<std::pair<ErrorCode, std::string>> mErrors;
};

class ResourceContext : public IPluginResourceContext
{
public:
    explicit ResourceContext(IErrorRecorder* recorder)
        : mRecorder(recorder)
    {
    }
    IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return mRecorder;
    }

private:
    IErrorRecorder* mRecorder;
};

//! A dimension expression that also carries its value, so the test can evaluate what the plugin built, and whether
//! it was derived from a size tensor (TensorRT tracks that; the expression interface does not expose it).
class Dim : public IDimensionExpr
{
public:
    Dim(int64_t value, bool constant, bool sizeTensor = false, bool fromSizeTensor = false)
        : mState{value, constant, sizeTensor, sizeTensor || fromSizeTensor}
    {
        mImpl = &mState;
    }
    int64_t value() const
    {
        return mState.value;
    }
    bool fromSizeTensor() const
    {
        return mState.fromSizeTensor;
    }

private:
    struct State : apiv::VDimensionExpr
    {
        State(int64_t v, bool c, bool s, bool f)
            : value(v)
            , constant(c)
            , sizeTensor(s)
            , fromSizeTensor(f)
        {
        }
        bool isConstant() const override
        {
            return constant;
        }
        int64_t getConstantValue() const override
        {
            return constant ? value : LLONG_MIN;
        }
        bool isSizeTensor() const override
        {
            return sizeTensor;
        }
        int64_t value;
        bool constant;
        bool sizeTensor;
        bool fromSizeTensor;
    } mState;
};

int64_t valueOf(IDimensionExpr const* e)
{
    return static_cast<Dim const*>(e)->value();
}

bool fromSizeTensor(IDimensionExpr const* e)
{
    return static_cast<Dim const*>(e)->fromSizeTensor();
}

class ExprBuilder : public IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = &mState;
    }
    Dim const* make(int64_t value, bool constant)
    {
        return mState.make(value, constant, false, false);
    }
    int32_t sizeTensorIndex() const
    {
        return mState.sizeIndex;
    }
    int64_t sizeTensorOpt() const
    {
        return mState.sizeOpt;
    }
    int64_t sizeTensorUpper() const
    {
        return mState.sizeUpper;
    }
    IDimensionExpr const* sizeTensor() const
    {
        return mState.size;
    }
    int32_t nbDeclared() const
    {
        return mState.nbDeclared;
    }
    //! Declarations refused for breaking the size-tensor rule (TensorRT fails such a build).
    int32_t nbRefused() const
    {
        return mState.nbRefused;
    }

private:
    struct State : apiv::VExprBuilder
    {
        Dim const* make(int64_t value, bool constant, bool sizeTensor, bool derived)
        {
            dims.push_back(std::make_unique<Dim>(value, constant, sizeTensor, derived));
            return dims.back().get();
        }
        IDimensionExpr const* constant(int64_t value) override
        {
            return make(value, true, false, false);
        }
        IDimensionExpr const* operation(
            DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second) override
        {
            int64_t const a = valueOf(&first);
            int64_t const b = valueOf(&second);
            int64_t v = 0;
            switch (op)
            {
            case DimensionOperation::kSUM: v = a + b; break;
            case DimensionOperation::kPROD: v = a * b; break;
            case DimensionOperation::kSUB: v = a - b; break;
            case DimensionOperation::kMAX: v = std::max(a, b); break;
            case DimensionOperation::kMIN: v = std::min(a, b); break;
            case DimensionOperation::kFLOOR_DIV: v = a / b; break;
            case DimensionOperation::kCEIL_DIV: v = (a + b - 1) / b; break;
            default: v = -1; break;
            }
            return make(v, first.isConstant() && second.isConstant(), false,
                fromSizeTensor(&first) || fromSizeTensor(&second));
        }
        //! NvInferRuntime.h: opt "must not depend on a size tensor"; TensorRT also needs a bound it can allocate
        //! for before any size tensor has a value. Either derived from a size tensor: refused with nullptr.
        IDimensionExpr const* declareSizeTensor(
            int32_t outputIndex, IDimensionExpr const& opt, IDimensionExpr const& upper) override
        {
            if (fromSizeTensor(&opt) || fromSizeTensor(&upper))
            {
                ++nbRefused;
                return nullptr;
            }
            ++nbDeclared;
            sizeIndex = outputIndex;
            sizeOpt = valueOf(&opt);
            sizeUpper = valueOf(&upper);
            size = make(-1, false, true, true);
            return size;
        }
        std::vector<std::unique_ptr<Dim>> dims;
        int32_t sizeIndex{-1};
        int64_t sizeOpt{-1};
        int64_t sizeUpper{-1};
        IDimensionExpr const* size{nullptr};
        int32_t nbDeclared{0};
        int32_t nbRefused{0};
    } mState;
};

Dims dims(std::initializer_list<int64_t> values)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    std::copy(values.begin(), values.end(), d.d);
    return d;
}

PluginTensorDesc desc(Dims d, DataType type)
{
    PluginTensorDesc t{};
    t.dims = d;
    t.type = type;
    t.format = TensorFormat::kLINEAR;
    t.scale = -1.0F;
    return t;
}

struct Plugin
{
    IPluginV3* base;
    IPluginV3OneCore* core;
    IPluginV3OneBuild* build;
    IPluginV3OneRuntime* runtime;
};

Plugin capabilities(IPluginV3* p)
{
    return {p, static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE)),
        static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD)),
        static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME))};
}

IPluginV3* create(IPluginCreatorV3One* creator, std::vector<PluginField> const& fields,
    TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return creator->createPlugin("token_select_0", &fc, phase);
}

void testShapes(Plugin const& p)
{
    ExprBuilder eb;
    Dim const* batch = eb.make(8, false); // dynamic batch
    DimsExprs in[3]{};
    in[0].nbDims = 3;
    in[0].d[0] = batch;
    in[0].d[1] = eb.make(197, true);
    in[0].d[2] = eb.make(384, true);
    in[1].nbDims = 2;
    in[1].d[0] = batch;
    in[1].d[1] = eb.make(195, true);
    in[2].nbDims = 0;
    DimsExprs out[3]{};
    EXPECT(p.build->getOutputShapes(in, 3, nullptr, 0, out, 3, eb) == 0);
    EXPECT(eb.sizeTensorIndex() == 2);
    EXPECT(eb.sizeTensorUpper() == 197);             // K <= N
    EXPECT(eb.sizeTensorOpt() == 2 + (195 + 1) / 2); // tuned for half the patches kept
    EXPECT(out[0].nbDims == 3 && out[0].d[0] == batch && out[0].d[1] == eb.sizeTensor()
        && valueOf(out[0].d[2]) == 384);
    EXPECT(out[1].nbDims == 1 && out[1].d[0] == batch);
    EXPECT(out[2].nbDims == 0);

    ExprBuilder bad;
    in[1].d[1] = bad.make(196, true); // scores must have N - P columns
    in[0].d[1] = bad.make(197, true);
    EXPECT(p.build->getOutputShapes(in, 3, nullptr, 0, out, 3, bad) != 0);
}

void testFormats(Plugin const& p)
{
    DynamicPluginTensorDesc io[6]{};
    auto set = [&](std::initializer_list<DataType> types) {
        int i = 0;
        for (DataType t : types)
        {
            io[i++].desc = desc(dims({1}), t);
        }
    };
    set({DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32, DataType::kINT32});
    for (int32_t pos = 0; pos < 6; ++pos)
    {
        EXPECT(p.build->supportsFormatCombination(pos, io, 3, 3));
    }
    set({DataType::kFLOAT, DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64, DataType::kINT32});
    EXPECT(p.build->supportsFormatCombination(0, io, 3, 3));
    EXPECT(!p.build->supportsFormatCombination(1, io, 3, 3)); // scores must match x
    EXPECT(!p.build->supportsFormatCombination(4, io, 3, 3)); // lengths are int32
    io[0].desc.type = DataType::kINT8;
    EXPECT(!p.build->supportsFormatCombination(0, io, 3, 3));
    io[0].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kCHW32;
    EXPECT(!p.build->supportsFormatCombination(0, io, 3, 3));

    DataType outTypes[3]{};
    DataType const halfIn[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
    EXPECT(p.build->getOutputDataTypes(outTypes, 3, halfIn, 3) == 0);
    EXPECT(outTypes[0] == DataType::kHALF && outTypes[1] == DataType::kINT32 && outTypes[2] == DataType::kINT32);
    DataType const mixedIn[3] = {DataType::kFLOAT, DataType::kHALF, DataType::kFLOAT};
    EXPECT(p.build->getOutputDataTypes(outTypes, 3, mixedIn, 3) != 0);
}

//! Host reference of TokenSelect for the GPU check (fp32).
std::vector<PluginField> attributes(int32_t const& prefix, int32_t const& minKeep, int32_t const* maxTokens)
{
    std::vector<PluginField> fields{PluginField("num_prefix", &prefix, PluginFieldType::kINT32, 1),
        PluginField("min_keep", &minKeep, PluginFieldType::kINT32, 1)};
    if (maxTokens != nullptr)
    {
        fields.emplace_back("max_tokens", maxTokens, PluginFieldType::kINT32, 1);
    }
    return fields;
}

//! Three TokenSelect layers as a 12-block DeiT-S prunes (197 tokens, 1 prefix): from the second on, x's N is the
//! previous layer's K, a size tensor. The stand-in builder refuses K bounds derived from it, as TensorRT does.
void testChain(IPluginCreatorV3One* creator, CapturingLogger& logger)
{
    int32_t const prefix = 1;
    int32_t const minKeep = 1;
    int32_t const maxTokens = 197;
    ExprBuilder eb;
    Dim const* batch = eb.make(64, false);
    IDimensionExpr const* tokens = eb.make(197, true);
    IDimensionExpr const* channels = eb.make(384, true);
    auto stageInputs = [&](DimsExprs* in) {
        in[0].nbDims = 3;
        in[0].d[0] = batch;
        in[0].d[1] = tokens;
        in[0].d[2] = channels;
        in[1].nbDims = 2;
        in[1].d[0] = batch;
        in[1].d[1] = eb.operation(DimensionOperation::kSUB, *tokens, *eb.constant(prefix)); // scores: N - P
        in[2].nbDims = 0;
    };
    for (int stage = 0; stage < 3; ++stage)
    {
        std::unique_ptr<IPluginV3> plugin(create(creator, attributes(prefix, minKeep, &maxTokens)));
        EXPECT(plugin != nullptr);
        if (!plugin)
        {
            return;
        }
        DimsExprs in[3]{};
        DimsExprs out[3]{};
        stageInputs(in);
        EXPECT(capabilities(plugin.get()).build->getOutputShapes(in, 3, nullptr, 0, out, 3, eb) == 0);
        EXPECT(eb.nbRefused() == 0 && eb.nbDeclared() == stage + 1);
        EXPECT(eb.sizeTensorUpper() == 197 && eb.sizeTensorOpt() == 1 + 98); // constants at every stage
        EXPECT(out[0].d[1] != nullptr && out[0].d[1] == eb.sizeTensor() && out[0].d[1]->isSizeTensor());
        EXPECT(out[0].d[0] == batch && out[0].d[2] == channels);
        if (out[0].d[1] == nullptr)
        {
            return;
        }
        tokens = out[0].d[1]; // the next stage's N
    }

    // The stand-in really enforces the rule: the old formula, K bounded by and tuned from x.d[1], is refused.
    IDimensionExpr const* oldOpt = eb.operation(DimensionOperation::kSUM, *eb.constant(prefix),
        *eb.operation(DimensionOperation::kCEIL_DIV,
            *eb.operation(DimensionOperation::kSUB, *tokens, *eb.constant(prefix)), *eb.constant(2)));
    EXPECT(static_cast<IExprBuilder&>(eb).declareSizeTensor(2, *oldOpt, *tokens) == nullptr && eb.nbRefused() == 1);

    // Without max_tokens a later stage has no constant to bound K by: a clear error, not a refused declaration.
    std::unique_ptr<IPluginV3> bare(create(creator, attributes(prefix, minKeep, nullptr)));
    DimsExprs in[3]{};
    DimsExprs out[3]{};
    stageInputs(in);
    logger.errors.clear();
    EXPECT(bare != nullptr && capabilities(bare.get()).build->getOutputShapes(in, 3, nullptr, 0, out, 3, eb) != 0);
    EXPECT(eb.nbRefused() == 1 && contains(logger.errors, "max_tokens"));

    // A constant N above max_tokens contradicts it.
    int32_t const tooFew = 100;
    std::unique_ptr<IPluginV3> small(create(creator, attributes(prefix, minKeep, &tooFew)));
    tokens = eb.make(197, true);
    stageInputs(in);
    logger.errors.clear();
    EXPECT(small != nullptr && capabilities(small.get()).build->getOutputShapes(in, 3, nullptr, 0, out, 3, eb) != 0);
    EXPECT(contains(logger.errors, "more than max_tokens=100"));
    int32_t const belowPrefix = 1;
    int32_t const twoPrefix = 2;
    EXPECT(create(creator, attributes(twoPrefix, minKeep, &belowPrefix)) == nullptr);
}

size_t elementSize(DataType type)
{
    return type == DataType::kHALF ? 2 : 4;
}

//! Host reference of TokenSelect for the GPU check. Rows are copied as raw bytes, as the kernels do.
void referenceSelect(std::vector<uint8_t> const& x, size_t es, std::vector<float> const& scores, float thr, int b,
    int n, int c, int prefix, int minKeep, std::vector<uint8_t>& y, std::vector<int32_t>& lengths, int& k)
{
    int const m = n - prefix;
    std::vector<std::vector<int>> kept(b);
    for (int s = 0; s < b; ++s)
    {
        float const* sc = scores.data() + static_cast<size_t>(s) * m;
        for (int i = 0; i < m; ++i)
        {
            if (sc[i] > thr)
            {
                kept[s].push_back(i);
            }
        }
        int const need = std::min(minKeep, m);
        if (static_cast<int>(kept[s].size()) < need)
        {
            std::vector<int> order(m);
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](int a, int z) { return sc[a] > sc[z]; });
            kept[s].assign(order.begin(), order.begin() + need);
            std::sort(kept[s].begin(), kept[s].end());
        }
    }
    lengths.resize(b);
    k = prefix;
    for (int s = 0; s < b; ++s)
    {
        lengths[s] = prefix + static_cast<int>(kept[s].size());
        k = std::max(k, lengths[s]);
    }
    size_t const row = c * es;
    y.assign(static_cast<size_t>(b) * k * row, 0);
    for (int s = 0; s < b; ++s)
    {
        for (int r = 0; r < lengths[s]; ++r)
        {
            int const src = r < prefix ? r : prefix + kept[s][r - prefix];
            std::copy_n(x.data() + (static_cast<size_t>(s) * n + src) * row, row,
                y.data() + (static_cast<size_t>(s) * k + r) * row);
        }
    }
}

struct DeviceBuffers
{
    std::vector<void*> ptrs;
    void* alloc(size_t bytes)
    {
        void* p = nullptr;
        EXPECT(cudaMalloc(&p, std::max<size_t>(bytes, 1)) == cudaSuccess);
        ptrs.push_back(p);
        return p;
    }
    ~DeviceBuffers()
    {
        for (void* p : ptrs)
        {
            cudaFree(p);
        }
    }
};

//! One enqueue on the GPU, checked against the host reference; y (bytes) and K come back for the next stage.
void enqueueStage(Plugin const& plugin, DataType type, std::vector<uint8_t> const& x, int b, int n, int c, int prefix,
    int minKeep, uint32_t seed, std::vector<uint8_t>& yOut, int& kOut)
{
    size_t const es = elementSize(type);
    int const m = n - prefix;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> scores(static_cast<size_t>(b) * m);
    for (float& v : scores)
    {
        v = std::round(normal(rng) * 2.0F) / 2.0F; // halves: exact in fp16, with ties at and around the threshold
    }
    if (b > 1)
    {
        std::fill_n(scores.begin() + m, m, -1.0F); // sample 1: nothing passes, min_keep picks the first ties
    }
    float const thr = 0.5F;
    std::vector<uint8_t> scoreBytes(scores.size() * es);
    std::vector<uint8_t> thrBytes(es);
    for (size_t i = 0; i <= scores.size(); ++i)
    {
        float const v = i < scores.size() ? scores[i] : thr;
        uint8_t* dst = i < scores.size() ? scoreBytes.data() + i * es : thrBytes.data();
        if (type == DataType::kHALF)
        {
            __half const h = __float2half(v);
            std::memcpy(dst, &h, 2);
        }
        else
        {
            std::memcpy(dst, &v, 4);
        }
    }
    std::vector<uint8_t> yRef;
    std::vector<int32_t> lengthsRef;
    int kRef = 0;
    referenceSelect(x, es, scores, thr, b, n, c, prefix, minKeep, yRef, lengthsRef, kRef);

    DeviceBuffers mem;
    void* dx = mem.alloc(x.size());
    void* ds = mem.alloc(scoreBytes.size());
    void* dt = mem.alloc(es);
    void* dy = mem.alloc(x.size()); // the upper bound: N rows per sample
    void* dl = mem.alloc(b * 4);
    void* dk = mem.alloc(4);
    void* dw = mem.alloc(tokengate_token_select_workspace_size(b, n, prefix));
    cudaMemcpy(dx, x.data(), x.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(ds, scoreBytes.data(), scoreBytes.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(dt, thrBytes.data(), es, cudaMemcpyHostToDevice);
    PluginTensorDesc in[3] = {desc(dims({b, n, c}), type), desc(dims({b, m}), type), desc(dims({}), type)};
    PluginTensorDesc out[3] = {desc(dims({b, n, c}), type), desc(dims({b}), DataType::kINT32),
        desc(dims({}), DataType::kINT32)};
    void const* inputs[3] = {dx, ds, dt};
    void* outputs[3] = {dy, dl, dk};
    EXPECT(plugin.runtime->enqueue(in, out, inputs, outputs, dw, nullptr) == 0);
    EXPECT(cudaDeviceSynchronize() == cudaSuccess);
    int k = 0;
    std::vector<int32_t> lengths(b);
    cudaMemcpy(&k, dk, 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(lengths.data(), dl, b * 4, cudaMemcpyDeviceToHost);
    EXPECT(k == kRef);
    EXPECT(lengths == lengthsRef);
    yOut.assign(yRef.size(), 0xFF);
    cudaMemcpy(yOut.data(), dy, yOut.size(), cudaMemcpyDeviceToHost);
    EXPECT(yOut == yRef); // bit-exact copies, zero padding
    kOut = k;
}

std::vector<uint8_t> randomRows(size_t bytes, uint32_t seed)
{
    std::mt19937 rng(seed);
    std::vector<uint8_t> x(bytes);
    for (uint8_t& v : x)
    {
        v = static_cast<uint8_t>(rng()); // any bit pattern: the gather must not interpret values
    }
    return x;
}

void testEnqueue(IPluginCreatorV3One* creator, Plugin const& attached, Recorder& recorder, ResourceContext& context)
{
    int32_t const prefix = 2;
    int32_t const minKeep = 3;
    int const b = 4, n = 9, c = 6;
    int deviceCount = 0;
    if (cudaGetDeviceCount(&deviceCount) != cudaSuccess || deviceCount == 0)
    {
        // No GPU: the launch fails inside enqueue, which must report it and return non-zero, not throw.
        PluginTensorDesc in[3] = {desc(dims({b, n, c}), DataType::kFLOAT),
            desc(dims({b, n - prefix}), DataType::kFLOAT), desc(dims({}), DataType::kFLOAT)};
        PluginTensorDesc out[3] = {desc(dims({b, n, c}), DataType::kFLOAT), desc(dims({b}), DataType::kINT32),
            desc(dims({}), DataType::kINT32)};
        static float dummy[64];
        void const* inputs[3] = {dummy, dummy, dummy};
        void* outputs[3] = {dummy, dummy, dummy};
        recorder.clear();
        EXPECT(attached.runtime->enqueue(in, out, inputs, outputs, dummy, nullptr) != 0);
        EXPECT(recorder.getNbErrors() == 1 && contains(recorder.getErrorDesc(0), "kernel launch failed"));
        std::cout << "no CUDA device: checked that a failed launch is reported" << std::endl;
        return;
    }
    auto attach = [&](int32_t p, int32_t keep, int32_t const* maxTokens) {
        std::unique_ptr<IPluginV3> built(create(creator, attributes(p, keep, maxTokens)));
        EXPECT(built != nullptr);
        IPluginV3* attachedPlugin = built ? capabilities(built.get()).runtime->attachToContext(&context) : nullptr;
        return std::unique_ptr<IPluginV3>(attachedPlugin);
    };
    std::vector<uint8_t> y;
    int k = 0;
    // fp32 with odd rows (4-byte copies), then fp16 DeiT-S rows (16-byte copies), then more than 256 patches.
    enqueueStage(attached, DataType::kFLOAT, randomRows(size_t{4} * b * n * c, 1), b, n, c, prefix, minKeep, 7, y, k);
    struct Case
    {
        DataType type;
        int b, n, c;
    };
    for (Case const& t : {Case{DataType::kHALF, 64, 197, 384}, Case{DataType::kHALF, 8, 300, 384},
             Case{DataType::kFLOAT, 8, 577, 384}})
    {
        std::unique_ptr<IPluginV3> plugin = attach(1, 1, nullptr);
        size_t const bytes = elementSize(t.type) * t.b * t.n * t.c;
        enqueueStage(capabilities(plugin.get()), t.type, randomRows(bytes, t.n), t.b, t.n, t.c, 1, 1, t.n + 1, y, k);
    }
    // A 3-stage chain: each stage's y (N = the previous K) is the next one's x; max_tokens bounds them all.
    int32_t const maxTokens = 197;
    std::vector<uint8_t> x = randomRows(size_t{2} * 64 * 197 * 384, 11);
    int tokens = 197;
    for (int stage = 0; stage < 3; ++stage)
    {
        std::unique_ptr<IPluginV3> plugin = attach(1, 1, &maxTokens);
        enqueueStage(capabilities(plugin.get()), DataType::kHALF, x, 64, tokens, 384, 1, 1, 20 + stage, y, k);
        EXPECT(k <= tokens);
        x.swap(y);
        tokens = k;
    }
    std::cout << "CUDA device: enqueue matched the host reference (fp32, fp16, N up to 577, a 3-stage chain)"
              << std::endl;
}

int runTests(char const* libraryPath)
{
    void* library = dlopen(libraryPath, RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        std::cerr << "cannot open " << libraryPath << ": " << dlerror() << std::endl;
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
    EXPECT(getCreators != nullptr && setLoggerFinder != nullptr);
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    LoggerFinder finder;
    setLoggerFinder(&finder);

    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    EXPECT(nbCreators == 1 && creators != nullptr);
    EXPECT(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    EXPECT(std::strcmp(creator->getPluginName(), "TokenSelect") == 0);
    EXPECT(std::strcmp(creator->getPluginVersion(), "1") == 0);
    EXPECT(std::strcmp(creator->getPluginNamespace(), "tokengate") == 0);
    PluginFieldCollection const* names = creator->getFieldNames();
    EXPECT(names->nbFields == 3 && std::strcmp(names->fields[0].name, "num_prefix") == 0
        && std::strcmp(names->fields[1].name, "min_keep") == 0
        && std::strcmp(names->fields[2].name, "max_tokens") == 0);

    // Attributes as the ONNX parser passes them (int32), and as Python callers often do (int64).
    int32_t const prefix = 2;
    int64_t const minKeep = 3;
    std::unique_ptr<IPluginV3> plugin(create(creator,
        {PluginField("num_prefix", &prefix, PluginFieldType::kINT32, 1),
            PluginField("min_keep", &minKeep, PluginFieldType::kINT64, 1)}));
    EXPECT(plugin != nullptr);
    if (!plugin)
    {
        return 1;
    }
    Plugin const p = capabilities(plugin.get());
    EXPECT(p.core && p.build && p.runtime);
    EXPECT(std::strcmp(p.core->getPluginName(), "TokenSelect") == 0
        && std::strcmp(p.core->getPluginNamespace(), "tokengate") == 0);
    EXPECT(p.build->getNbOutputs() == 3);
    EXPECT(std::string(p.build->getMetadataString()) == "num_prefix=2 min_keep=3 max_tokens=0");

    // Bad attributes are reported through the logger and give no plugin, never an exception.
    int32_t const zero = 0;
    EXPECT(create(creator, {PluginField("num_prefix", &prefix, PluginFieldType::kINT32, 1)}) == nullptr);
    EXPECT(contains(finder.logger.errors, "min_keep"));
    EXPECT(create(creator,
               {PluginField("num_prefix", &zero, PluginFieldType::kINT32, 1),
                   PluginField("min_keep", &minKeep, PluginFieldType::kINT64, 1)})
        == nullptr);
    float const notAnInt = 1.0F;
    EXPECT(create(creator,
               {PluginField("num_prefix", &notAnInt, PluginFieldType::kFLOAT32, 1),
                   PluginField("min_keep", &minKeep, PluginFieldType::kINT64, 1)})
        == nullptr);
    std::unique_ptr<IPluginV3> withExtra(create(creator,
        {PluginField("num_prefix", &prefix, PluginFieldType::kINT32, 1),
            PluginField("min_keep", &minKeep, PluginFieldType::kINT64, 1),
            PluginField("plugin_namespace", "tokengate", PluginFieldType::kCHAR, 10)}));
    EXPECT(withExtra != nullptr && contains(finder.logger.warnings, "plugin_namespace"));

    testShapes(p);
    testFormats(p);
    testChain(creator, finder.logger);

    DynamicPluginTensorDesc ioDesc[6]{};
    ioDesc[0].max = dims({64, 197, 384});
    size_t const workspace = p.build->getWorkspaceSize(ioDesc, 3, ioDesc + 3, 3);
    EXPECT(workspace == tokengate_token_select_workspace_size(64, 197, 2));
    EXPECT(workspace >= 64 * 195 * sizeof(int32_t) && workspace % 256 == 0);

    // Serialize and rebuild as the runtime does when deserializing an engine.
    PluginFieldCollection const* saved = p.runtime->getFieldsToSerialize();
    std::vector<PluginField> const fields(saved->fields, saved->fields + saved->nbFields);
    std::unique_ptr<IPluginV3> restored(create(creator, fields, TensorRTPhase::kRUNTIME));
    EXPECT(restored != nullptr
        && std::string(capabilities(restored.get()).build->getMetadataString())
            == "num_prefix=2 min_keep=3 max_tokens=0");

    std::unique_ptr<IPluginV3> cloned(plugin->clone());
    EXPECT(cloned != nullptr && capabilities(cloned.get()).build->getNbOutputs() == 3);

    Recorder recorder;
    ResourceContext context(&recorder);
    std::unique_ptr<IPluginV3> attached(p.runtime->attachToContext(&context));
    EXPECT(attached != nullptr);
    Plugin const a = capabilities(attached.get());
    PluginTensorDesc in[3] = {desc(dims({2, 9, 4}), DataType::kFLOAT), desc(dims({2, 8}), DataType::kFLOAT),
        desc(dims({}), DataType::kFLOAT)};
    PluginTensorDesc out[3] = {desc(dims({2, 9, 4}), DataType::kFLOAT), desc(dims({2}), DataType::kINT32),
        desc(dims({}), DataType::kINT32)};
    void const* inputs[3] = {nullptr, nullptr, nullptr};
    void* outputs[3] = {nullptr, nullptr, nullptr};
    EXPECT(a.runtime->enqueue(in, out, inputs, outputs, nullptr, nullptr) != 0); // scores has 8 != 9 - 2 columns
    EXPECT(recorder.getNbErrors() == 1 && recorder.getErrorCode(0) == ErrorCode::kINVALID_ARGUMENT);

    // More tokens than max_tokens would overrun y, which TensorRT sized for max_tokens: refused before any launch.
    int32_t const onePrefix = 1;
    int32_t const eight = 8;
    std::unique_ptr<IPluginV3> bounded(create(creator, attributes(onePrefix, prefix, &eight)));
    std::unique_ptr<IPluginV3> boundedAttached(
        bounded ? capabilities(bounded.get()).runtime->attachToContext(&context) : nullptr);
    EXPECT(boundedAttached != nullptr);
    if (boundedAttached)
    {
        recorder.clear();
        in[1] = desc(dims({2, 8}), DataType::kFLOAT); // 9 tokens, 1 prefix
        EXPECT(capabilities(boundedAttached.get()).runtime->enqueue(in, out, inputs, outputs, nullptr, nullptr) != 0);
        EXPECT(recorder.getNbErrors() == 1 && contains(recorder.getErrorDesc(0), "max_tokens=8"));
        PluginFieldCollection const* kept = capabilities(boundedAttached.get()).runtime->getFieldsToSerialize();
        std::unique_ptr<IPluginV3> reread(
            create(creator, std::vector<PluginField>(kept->fields, kept->fields + kept->nbFields)));
        EXPECT(reread != nullptr
            && std::string(capabilities(reread.get()).build->getMetadataString())
                == "num_prefix=1 min_keep=2 max_tokens=8");
        ioDesc[0].max = dims({64, -1, 384}); // a data-dependent N: max_tokens sizes the workspace
        EXPECT(capabilities(bounded.get()).build->getWorkspaceSize(ioDesc, 3, ioDesc + 3, 3)
            == tokengate_token_select_workspace_size(64, 8, 1));
    }
    testEnqueue(creator, a, recorder, context);

    std::cout << gPassed << " passed, " << gFailed << " failed" << std::endl;
    return gFailed == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::cerr << "usage: tokengate_plugin_selftest path/to/libtokengate_plugins.so" << std::endl;
        return 2;
    }
    return runTests(argv[1]);
}
