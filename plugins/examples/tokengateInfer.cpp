/*
 * tokengate_infer: run a TensorRT engine built from a TokenGate ONNX on a batch of raw images, print the top-5.
 *
 *   tokengate_infer --engine runs/NAME/model.plugin.sm90.fp16.engine \
 *                   --plugins plugins/build/libtokengate_plugins.so [--labels classes.txt] img0.raw img1.raw ...
 *
 * Each image file holds C*H*W float32 values, already normalised, in the layout of the engine input [B, C, H, W].
 * Images are run in chunks of the engine profile's largest batch. This is the whole embedding recipe: load the
 * plugin library into the runtime's registry, deserialize, bind, enqueueV3 (see README.md beside this file).
 */
#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::cerr << "[TensorRT] " << msg << std::endl;
        }
    }
};

void checkCuda(cudaError_t status, char const* what)
{
    if (status != cudaSuccess)
    {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
    }
}

struct CudaFree
{
    void operator()(void* p) const
    {
        cudaFree(p);
    }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;

DeviceBuffer deviceAlloc(size_t bytes)
{
    void* p = nullptr;
    checkCuda(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc");
    return DeviceBuffer(p);
}

size_t elementSize(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kINT64: return 8;
    default: throw std::runtime_error("unsupported I/O data type " + std::to_string(static_cast<int32_t>(type)));
    }
}

int64_t volume(nvinfer1::Dims const& dims)
{
    int64_t v = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        v *= dims.d[i];
    }
    return v;
}

bool hasUnknownDim(nvinfer1::Dims const& dims)
{
    return dims.nbDims < 0 || std::any_of(dims.d, dims.d + dims.nbDims, [](int64_t d) { return d < 0; });
}

//! Memory for an output whose shape is only known while the engine runs (a data-dependent shape). The context keeps
//! a pointer to it from setOutputAllocator on, so it must live as long as the context runs; it grows, never shrinks,
//! and returns memory aligned as TensorRT asks.
class GrowingOutputAllocator : public nvinfer1::IOutputAllocator
{
public:
    void* reallocateOutputAsync(char const* /*name*/, void* /*current*/, uint64_t size, uint64_t alignment,
        cudaStream_t /*stream*/) noexcept override
    {
        uint64_t const align = std::max<uint64_t>(alignment, 1);
        if ((align & (align - 1)) != 0)
        {
            return nullptr; // TensorRT asks for powers of two; anything else cannot be honoured
        }
        if (mData != nullptr && size <= mUsable && reinterpret_cast<uintptr_t>(mData) % align == 0)
        {
            return mData;
        }
        // cudaMalloc aligns to 256 bytes at least; a larger alignment needs room to move the start up.
        uint64_t const slack = align > 256 ? align - 1 : 0;
        mBuffer.reset(); // nothing reads it: run() synchronizes after every chunk
        mData = nullptr;
        mUsable = 0;
        void* p = nullptr;
        if (cudaMalloc(&p, std::max<uint64_t>(size + slack, 1)) != cudaSuccess)
        {
            return nullptr;
        }
        mBuffer.reset(p);
        uintptr_t const start = (reinterpret_cast<uintptr_t>(p) + align - 1) / align * align;
        mData = reinterpret_cast<void*>(start);
        mUsable = size + slack - (start - reinterpret_cast<uintptr_t>(p));
        return mData;
    }

    void notifyShape(char const* /*name*/, nvinfer1::Dims const& dims) noexcept override
    {
        mDims = dims;
    }

    void* data() const
    {
        return mData;
    }

    nvinfer1::Dims const& dims() const
    {
        return mDims;
    }

private:
    DeviceBuffer mBuffer;
    void* mData{nullptr};  //!< mBuffer's start, moved up to the requested alignment
    uint64_t mUsable{0};   //!< bytes from mData to the end of mBuffer
    nvinfer1::Dims mDims{};
};

struct Options
{
    std::string engine;
    std::string plugins;
    std::string labels;
    std::vector<std::string> images;
};

Options parseArgs(int argc, char** argv)
{
    Options options;
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc)
            {
                throw std::runtime_error(arg + " needs a value");
            }
            return argv[++i];
        };
        if (arg == "--engine")
        {
            options.engine = value();
        }
        else if (arg == "--plugins")
        {
            options.plugins = value();
        }
        else if (arg == "--labels")
        {
            options.labels = value();
        }
        else if (arg.rfind("--", 0) == 0)
        {
            throw std::runtime_error("unknown option " + arg);
        }
        else
        {
            options.images.push_back(arg);
        }
    }
    if (options.engine.empty() || options.images.empty())
    {
        throw std::runtime_error(
            "usage: tokengate_infer --engine FILE [--plugins libtokengate_plugins.so] [--labels FILE] IMAGE.raw...");
    }
    return options;
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream file(path, std::ios::binary | std::ios::ate);
    if (!file)
    {
        throw std::runtime_error("cannot open " + path);
    }
    std::vector<char> bytes(static_cast<size_t>(file.tellg()));
    file.seekg(0);
    file.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return bytes;
}

std::vector<std::string> readLabels(std::string const& path)
{
    std::vector<std::string> labels;
    if (path.empty())
    {
        return labels;
    }
    std::ifstream file(path);
    if (!file)
    {
        throw std::runtime_error("cannot open " + path);
    }
    for (std::string line; std::getline(file, line);)
    {
        labels.push_back(line);
    }
    return labels;
}

//! Copies `count` values to the device in the engine's input type.
void uploadInput(float const* values, size_t count, nvinfer1::DataType type, void* device, cudaStream_t stream)
{
    if (type == nvinfer1::DataType::kFLOAT)
    {
        checkCuda(cudaMemcpyAsync(device, values, count * 4, cudaMemcpyHostToDevice, stream), "upload");
        checkCuda(cudaStreamSynchronize(stream), "upload");
        return;
    }
    if (type != nvinfer1::DataType::kHALF)
    {
        throw std::runtime_error("the image input must be float32 or float16");
    }
    std::vector<__half> halves(count);
    std::transform(values, values + count, halves.begin(), [](float v) { return __float2half(v); });
    checkCuda(cudaMemcpyAsync(device, halves.data(), count * 2, cudaMemcpyHostToDevice, stream), "upload");
    checkCuda(cudaStreamSynchronize(stream), "upload"); // `halves` dies at return
}

std::vector<float> downloadFloats(void const* device, size_t count, nvinfer1::DataType type)
{
    std::vector<float> values(count);
    if (type == nvinfer1::DataType::kFLOAT)
    {
        checkCuda(cudaMemcpy(values.data(), device, count * 4, cudaMemcpyDeviceToHost), "download");
        return values;
    }
    if (type != nvinfer1::DataType::kHALF)
    {
        throw std::runtime_error("the logits output must be float32 or float16");
    }
    std::vector<__half> halves(count);
    checkCuda(cudaMemcpy(halves.data(), device, count * 2, cudaMemcpyDeviceToHost), "download");
    std::transform(halves.begin(), halves.end(), values.begin(), [](__half v) { return __half2float(v); });
    return values;
}

void printTop5(std::string const& image, float const* logits, int64_t classes, std::vector<std::string> const& labels)
{
    float const peak = *std::max_element(logits, logits + classes);
    std::vector<double> probs(static_cast<size_t>(classes));
    double sum = 0.0;
    for (int64_t c = 0; c < classes; ++c)
    {
        probs[c] = std::exp(static_cast<double>(logits[c] - peak));
        sum += probs[c];
    }
    std::vector<int64_t> order(static_cast<size_t>(classes));
    std::iota(order.begin(), order.end(), 0);
    int64_t const k = std::min<int64_t>(5, classes);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
        [&](int64_t a, int64_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
    std::cout << image << ":";
    for (int64_t i = 0; i < k; ++i)
    {
        int64_t const c = order[i];
        std::string const name = c < static_cast<int64_t>(labels.size()) ? labels[c] : "class " + std::to_string(c);
        std::cout << "  " << i + 1 << ") " << name << " " << std::fixed << std::setprecision(4) << probs[c] / sum;
    }
    std::cout << std::endl;
}

int run(Options const& options)
{
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
    if (!runtime)
    {
        throw std::runtime_error("createInferRuntime failed");
    }
    if (!options.plugins.empty() && runtime->getPluginRegistry().loadLibrary(options.plugins.c_str()) == nullptr)
    {
        throw std::runtime_error("cannot load plugin library " + options.plugins + " (see the TensorRT log above)");
    }
    std::vector<char> const plan = readFile(options.engine);
    std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine)
    {
        throw std::runtime_error("cannot deserialize " + options.engine
            + ": built by another TensorRT version or for another GPU, corrupt, or its plugin library is missing");
    }
    // Declared before the context, so destroyed after it: the context points at them from setOutputAllocator on.
    std::map<std::string, std::unique_ptr<GrowingOutputAllocator>> allocators;
    std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
    if (!context)
    {
        throw std::runtime_error("createExecutionContext failed");
    }

    std::vector<std::string> inputs;
    std::vector<std::string> outputs;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).emplace_back(name);
    }
    if (inputs.size() != 1 || outputs.empty())
    {
        throw std::runtime_error("expected one image input and at least one output");
    }
    char const* input = inputs[0].c_str();
    char const* logitsName = outputs[0].c_str(); // the classifier's logits come first
    nvinfer1::Dims const inputDims = engine->getTensorShape(input);
    if (inputDims.nbDims != 4 || inputDims.d[1] <= 0 || inputDims.d[2] <= 0 || inputDims.d[3] <= 0)
    {
        throw std::runtime_error("the input must be [B, C, H, W] with static C, H, W");
    }
    int64_t const minBatch = engine->getProfileShape(input, 0, nvinfer1::OptProfileSelector::kMIN).d[0];
    int64_t const maxBatch = engine->getProfileShape(input, 0, nvinfer1::OptProfileSelector::kMAX).d[0];
    size_t const imageFloats = static_cast<size_t>(inputDims.d[1] * inputDims.d[2] * inputDims.d[3]);
    nvinfer1::DataType const inputType = engine->getTensorDataType(input);

    std::vector<float> pixels;
    for (auto const& image : options.images)
    {
        std::vector<char> const bytes = readFile(image);
        if (bytes.size() != imageFloats * sizeof(float))
        {
            throw std::runtime_error(image + " has " + std::to_string(bytes.size()) + " bytes; expected "
                + std::to_string(imageFloats * sizeof(float)) + " (float32 C*H*W)");
        }
        size_t const offset = pixels.size();
        pixels.resize(offset + imageFloats);
        std::memcpy(pixels.data() + offset, bytes.data(), bytes.size());
    }
    std::vector<std::string> const labels = readLabels(options.labels);

    cudaStream_t stream = nullptr;
    checkCuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> streamGuard(stream, &cudaStreamDestroy);
    int64_t const total = static_cast<int64_t>(options.images.size());
    for (int64_t first = 0; first < total; first += maxBatch)
    {
        int64_t const count = std::min(maxBatch, total - first);
        int64_t const batch = std::max(count, minBatch); // pad with zero images up to the profile's minimum
        std::vector<float> chunk(static_cast<size_t>(batch) * imageFloats, 0.0F);
        std::copy_n(pixels.data() + first * imageFloats, count * imageFloats, chunk.data());

        DeviceBuffer inputBuffer = deviceAlloc(chunk.size() * elementSize(inputType));
        uploadInput(chunk.data(), chunk.size(), inputType, inputBuffer.get(), stream);
        nvinfer1::Dims shape = inputDims;
        shape.d[0] = batch;
        if (!context->setInputShape(input, shape) || !context->setTensorAddress(input, inputBuffer.get()))
        {
            throw std::runtime_error("batch " + std::to_string(batch) + " is outside the engine's profile ["
                + std::to_string(minBatch) + ", " + std::to_string(maxBatch) + "]");
        }
        // Static-shape outputs get a buffer now; data-dependent ones are allocated by TensorRT through the allocator.
        std::vector<DeviceBuffer> fixedBuffers;
        void* logits = nullptr;
        nvinfer1::Dims logitsDims{};
        GrowingOutputAllocator* logitsAllocator = nullptr;
        for (auto const& name : outputs)
        {
            nvinfer1::Dims const dims = context->getTensorShape(name.c_str());
            if (hasUnknownDim(dims))
            {
                std::unique_ptr<GrowingOutputAllocator>& allocator = allocators[name]; // one per output, kept
                if (!allocator)
                {
                    allocator = std::make_unique<GrowingOutputAllocator>();
                }
                if (!context->setOutputAllocator(name.c_str(), allocator.get()))
                {
                    throw std::runtime_error("setOutputAllocator failed for output " + name);
                }
                logitsAllocator = name == logitsName ? allocator.get() : logitsAllocator;
                continue;
            }
            fixedBuffers.push_back(deviceAlloc(volume(dims) * elementSize(engine->getTensorDataType(name.c_str()))));
            if (!context->setTensorAddress(name.c_str(), fixedBuffers.back().get()))
            {
                throw std::runtime_error("setTensorAddress failed for output " + name);
            }
            if (name == logitsName)
            {
                logits = fixedBuffers.back().get();
                logitsDims = dims;
            }
        }
        if (!context->enqueueV3(stream))
        {
            throw std::runtime_error("enqueueV3 failed (see the TensorRT log above)");
        }
        checkCuda(cudaStreamSynchronize(stream), "inference");
        if (logitsAllocator != nullptr)
        {
            logits = logitsAllocator->data();
            logitsDims = logitsAllocator->dims();
        }
        if (logitsDims.nbDims != 2 || logitsDims.d[0] != batch || logitsDims.d[1] < 1)
        {
            throw std::runtime_error(std::string("output ") + logitsName + " is not [B, classes] logits with "
                                     "at least one class");
        }
        int64_t const classes = logitsDims.d[1];
        std::vector<float> const values
            = downloadFloats(logits, static_cast<size_t>(batch * classes), engine->getTensorDataType(logitsName));
        for (int64_t i = 0; i < count; ++i)
        {
            printTop5(options.images[first + i], values.data() + i * classes, classes, labels);
        }
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(parseArgs(argc, argv));
    }
    catch (std::exception const& e)
    {
        std::cerr << "tokengate_infer: " << e.what() << std::endl;
        return 1;
    }
}
