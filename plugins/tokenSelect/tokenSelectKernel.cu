/*
 * TokenSelect CUDA kernels: a per-sample stable compaction, then a gather. See tokenSelectKernel.h.
 * Semantics (bit-exact with pipeline.models.token_ops.token_select_reference):
 *   keep = (score > threshold) OR (rank < min(min_keep, N - P)), rank by descending score, ties to the lower index,
 *   NaN ranking as -inf (and never passing the threshold), -0 tying with +0.
 */
#include "tokenSelectKernel.h"

#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

namespace
{

constexpr int kWARP = 32;
constexpr int kCOMPACT_MAX_THREADS = 256;
constexpr int kGATHER_THREADS = 256;
constexpr int kGATHER_UNROLL = 4; // vectors in flight per thread
constexpr int kGATHER_MAX_ROWS = 64;
constexpr size_t kWORKSPACE_ALIGN = 256;

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v); // exact, so comparisons match fp16 comparisons
}

//! Order-preserving uint32 key of a score for ranking, matching the reference's ranking of
//! nan_to_num(score, nan=-inf, posinf=inf, neginf=-inf): NaN ties with -inf, and -0 ties with +0.
template <typename T>
__device__ __forceinline__ uint32_t rankKey(T score)
{
    float const s = toFloat(score);
    float const v = isnan(s) ? -INFINITY : (s == 0.0F ? 0.0F : s);
    uint32_t const u = __float_as_uint(v);
    return (u & 0x80000000U) ? ~u : (u | 0x80000000U);
}

//! Exclusive count of `flag` over the block in thread order; `total` gets the block-wide count.
//! Every thread of the block must call it (blockDim.x is a multiple of 32).
__device__ __forceinline__ int blockExclusiveCount(bool flag, int* warpCounts, int& total)
{
    int const lane = threadIdx.x % kWARP;
    int const warp = threadIdx.x / kWARP;
    unsigned const ballot = __ballot_sync(0xFFFFFFFFU, flag);
    if (lane == 0)
    {
        warpCounts[warp] = __popc(ballot);
    }
    __syncthreads();
    int before = 0;
    total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWARP; ++w)
    {
        int const c = warpCounts[w];
        before += w < warp ? c : 0;
        total += c;
    }
    __syncthreads(); // warpCounts is reused by the next call
    return before + __popc(ballot & ((1U << lane) - 1U));
}

//! The exact rule, keep = pass OR rank < need, for samples where the fast path cannot decide: a radix select finds
//! the need-th largest key; keys above it rank inside, and ties at it go to the lowest indices. Rare: a sample with
//! fewer than `need` passing patches, or NaN scores tying with -inf ones across the threshold.
template <typename T>
__device__ int keepPassOrTopRanked(T const* s, float thr, int32_t* idx, int n, int need, int* warpCounts)
{
    uint32_t kth = 0;
    for (int bit = 31; bit >= 0; --bit)
    {
        uint32_t const cand = kth | (1U << bit);
        int atLeast = 0;
        for (int base = 0; base < n; base += blockDim.x)
        {
            int const i = base + threadIdx.x;
            atLeast += __syncthreads_count(i < n && rankKey(s[i]) >= cand);
        }
        if (atLeast >= need)
        {
            kth = cand;
        }
    }
    int above = 0;
    for (int base = 0; base < n; base += blockDim.x)
    {
        int const i = base + threadIdx.x;
        above += __syncthreads_count(i < n && rankKey(s[i]) > kth);
    }
    int const tiesWanted = need - above;
    int kept = 0;
    int tiesSeen = 0;
    for (int base = 0; base < n; base += blockDim.x)
    {
        int const i = base + threadIdx.x;
        uint32_t const key = i < n ? rankKey(s[i]) : 0U;
        bool const tie = i < n && key == kth;
        int tieTotal = 0;
        int const tieRank = tiesSeen + blockExclusiveCount(tie, warpCounts, tieTotal);
        bool const topRanked = key > kth || (tie && tieRank < tiesWanted);
        bool const keep = i < n && (topRanked || toFloat(s[i]) > thr);
        int keepTotal = 0;
        int const pos = blockExclusiveCount(keep, warpCounts, keepTotal);
        if (keep)
        {
            idx[kept + pos] = i;
        }
        kept += keepTotal;
        tiesSeen += tieTotal;
    }
    return kept;
}

//! One block per sample: kept patch indices (in order) to keptIdx[b, :], and lengths[b] = P + kept.
template <typename T>
__global__ void __launch_bounds__(kCOMPACT_MAX_THREADS) tokengateCompactKernel(T const* __restrict__ scores,
    T const* __restrict__ threshold, int32_t* __restrict__ keptIdx, int32_t* __restrict__ lengths, int numPatches,
    int numPrefix, int minKeep)
{
    __shared__ int warpCounts[kCOMPACT_MAX_THREADS / kWARP];
    __shared__ uint32_t sMaxFailKey;
    __shared__ uint32_t sMinPassKey;
    size_t const b = blockIdx.x;
    T const* s = scores + b * numPatches;
    int32_t* idx = keptIdx + b * numPatches;
    float const thr = toFloat(*threshold);
    int const need = min(minKeep, numPatches);
    if (threadIdx.x == 0)
    {
        sMaxFailKey = 0U; // below every key (the smallest, -inf's and NaN's, is 0x007FFFFF)
        sMinPassKey = 0xFFFFFFFFU;
    }
    __syncthreads();

    // Fast path, one pass: keep = pass, exact when enough patches pass and every passing key outranks every
    // failing one (then the top `need` by rank all pass). With NaN ranked as -inf the second always holds.
    int kept = 0;
    uint32_t maxFailKey = 0U;
    uint32_t minPassKey = 0xFFFFFFFFU;
    for (int base = 0; base < numPatches; base += blockDim.x)
    {
        int const i = base + threadIdx.x;
        bool pass = false;
        if (i < numPatches)
        {
            pass = toFloat(s[i]) > thr; // NaN never passes
            uint32_t const key = rankKey(s[i]);
            maxFailKey = pass ? maxFailKey : max(maxFailKey, key);
            minPassKey = pass ? min(minPassKey, key) : minPassKey;
        }
        int total = 0;
        int const pos = blockExclusiveCount(pass, warpCounts, total);
        if (pass)
        {
            idx[kept + pos] = i;
        }
        kept += total;
    }
    atomicMax(&sMaxFailKey, maxFailKey);
    atomicMin(&sMinPassKey, minPassKey);
    __syncthreads();
    if (kept < need || sMaxFailKey >= sMinPassKey)
    {
        kept = keepPassOrTopRanked(s, thr, idx, numPatches, need, warpCounts);
    }
    if (threadIdx.x == 0)
    {
        lengths[b] = numPrefix + kept;
    }
}

//! Copies rows of `rowVecs` vectors of type V (raw bits: the gather never converts values).
//! Block = (sample b, tile of rowsPerBlock rows). K = max(lengths) is reduced by every block from device memory,
//! so nothing needs zero-initialising and the host never waits for it.
template <typename V>
__global__ void __launch_bounds__(kGATHER_THREADS) tokengateGatherKernel(V const* __restrict__ x,
    int32_t const* __restrict__ keptIdx, int32_t const* __restrict__ lengths, V* __restrict__ y,
    int32_t* __restrict__ kOut, int batch, int numTokens, int numPrefix, int rowVecs, int rowsPerBlock,
    int tilesPerSample)
{
    __shared__ int sK;
    __shared__ int sSrc[kGATHER_MAX_ROWS];
    int const b = static_cast<int>(blockIdx.x) / tilesPerSample;
    int const row0 = (static_cast<int>(blockIdx.x) % tilesPerSample) * rowsPerBlock;
    int const numPatches = numTokens - numPrefix;

    if (threadIdx.x < kWARP)
    {
        int k = numPrefix;
        for (int i = threadIdx.x; i < batch; i += kWARP)
        {
            k = max(k, lengths[i]);
        }
        for (int offset = kWARP / 2; offset > 0; offset /= 2)
        {
            k = max(k, __shfl_xor_sync(0xFFFFFFFFU, k, offset));
        }
        if (threadIdx.x == 0)
        {
            sK = k;
            if (blockIdx.x == 0 && kOut != nullptr)
            {
                *kOut = k;
            }
        }
    }
    // Source row of each output row of the tile: prefix rows map to themselves, then kept patches, then zeros (-1).
    if (static_cast<int>(threadIdx.x) < rowsPerBlock && b < batch)
    {
        int const r = row0 + static_cast<int>(threadIdx.x);
        int src = -1;
        if (r < numPrefix)
        {
            src = r;
        }
        else if (r - numPrefix < lengths[b] - numPrefix)
        {
            src = numPrefix + keptIdx[static_cast<size_t>(b) * numPatches + (r - numPrefix)];
        }
        sSrc[threadIdx.x] = src;
    }
    __syncthreads();

    int const k = sK;
    if (b >= batch || row0 >= k)
    {
        return;
    }
    int const rows = min(rowsPerBlock, k - row0);
    int const total = rows * rowVecs;
    V const* xb = x + static_cast<size_t>(b) * numTokens * rowVecs;
    V* yTile = y + (static_cast<size_t>(b) * k + row0) * rowVecs; // the tile's rows are contiguous in y
    for (int e0 = threadIdx.x; e0 < total; e0 += kGATHER_THREADS * kGATHER_UNROLL)
    {
        V v[kGATHER_UNROLL];
#pragma unroll
        for (int u = 0; u < kGATHER_UNROLL; ++u)
        {
            int const e = e0 + u * kGATHER_THREADS;
            v[u] = V{};
            if (e < total)
            {
                int const r = e / rowVecs;
                int const src = sSrc[r];
                if (src >= 0)
                {
                    v[u] = xb[static_cast<size_t>(src) * rowVecs + (e - r * rowVecs)];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < kGATHER_UNROLL; ++u)
        {
            int const e = e0 + u * kGATHER_THREADS;
            if (e < total)
            {
                yTile[e] = v[u];
            }
        }
    }
}

template <typename V>
cudaError_t launchGather(void const* x, int32_t const* keptIdx, int32_t const* lengths, void* y, int32_t* kOut,
    int batch, int numTokens, int numPrefix, int rowBytes, cudaStream_t stream)
{
    int const rowVecs = rowBytes / static_cast<int>(sizeof(V));
    int rowsPerBlock = kGATHER_THREADS * kGATHER_UNROLL / rowVecs;
    rowsPerBlock = rowsPerBlock < 1 ? 1 : (rowsPerBlock > kGATHER_MAX_ROWS ? kGATHER_MAX_ROWS : rowsPerBlock);
    int const tilesPerSample = (numTokens + rowsPerBlock - 1) / rowsPerBlock;
    int64_t const blocks = static_cast<int64_t>(batch > 0 ? batch : 1) * tilesPerSample;
    if (blocks > INT_MAX)
    {
        return cudaErrorInvalidConfiguration;
    }
    tokengateGatherKernel<V><<<static_cast<unsigned>(blocks), kGATHER_THREADS, 0, stream>>>(static_cast<V const*>(x),
        keptIdx, lengths, static_cast<V*>(y), kOut, batch, numTokens, numPrefix, rowVecs, rowsPerBlock,
        tilesPerSample);
    return cudaGetLastError();
}

//! Widest copy unit that divides the row size and both base addresses (16-byte vectors in the usual case).
cudaError_t dispatchGather(void const* x, int32_t const* keptIdx, int32_t const* lengths, void* y, int32_t* kOut,
    int batch, int numTokens, int numPrefix, int rowBytes, cudaStream_t stream)
{
    auto const fits = [&](uintptr_t width) {
        return rowBytes % width == 0 && reinterpret_cast<uintptr_t>(x) % width == 0
            && reinterpret_cast<uintptr_t>(y) % width == 0;
    };
    if (fits(16))
    {
        return launchGather<uint4>(x, keptIdx, lengths, y, kOut, batch, numTokens, numPrefix, rowBytes, stream);
    }
    if (fits(8))
    {
        return launchGather<uint2>(x, keptIdx, lengths, y, kOut, batch, numTokens, numPrefix, rowBytes, stream);
    }
    if (fits(4))
    {
        return launchGather<uint32_t>(x, keptIdx, lengths, y, kOut, batch, numTokens, numPrefix, rowBytes, stream);
    }
    return launchGather<uint16_t>(x, keptIdx, lengths, y, kOut, batch, numTokens, numPrefix, rowBytes, stream);
}

template <typename T>
cudaError_t launchCompact(void const* scores, void const* threshold, int32_t* keptIdx, int32_t* lengths, int batch,
    int numPatches, int numPrefix, int minKeep, cudaStream_t stream)
{
    int const wanted = ((numPatches > 0 ? numPatches : 1) + kWARP - 1) / kWARP * kWARP;
    int const threads = wanted < kCOMPACT_MAX_THREADS ? wanted : kCOMPACT_MAX_THREADS;
    tokengateCompactKernel<T><<<static_cast<unsigned>(batch), threads, 0, stream>>>(static_cast<T const*>(scores),
        static_cast<T const*>(threshold), keptIdx, lengths, numPatches, numPrefix, minKeep);
    return cudaGetLastError();
}

} // namespace

extern "C" TOKENGATE_API int32_t tokengate_kernels_abi_version(void)
{
    return TOKENGATE_KERNELS_ABI_VERSION;
}

extern "C" TOKENGATE_API size_t tokengate_token_select_workspace_size(
    int64_t batch, int64_t num_tokens, int64_t num_prefix)
{
    if (batch < 0 || num_prefix < 0 || num_tokens < num_prefix)
    {
        return 0;
    }
    size_t const bytes = static_cast<size_t>(batch) * static_cast<size_t>(num_tokens - num_prefix) * sizeof(int32_t);
    return (bytes + kWORKSPACE_ALIGN - 1) / kWORKSPACE_ALIGN * kWORKSPACE_ALIGN;
}

extern "C" TOKENGATE_API int32_t tokengate_token_select(int32_t dtype, void const* x, void const* scores,
    void const* threshold, void* y, int32_t* lengths, int32_t* k_out, void* workspace, int64_t batch,
    int64_t num_tokens, int64_t channels, int64_t num_prefix, int64_t min_keep, cudaStream_t stream)
{
    if (dtype != TOKENGATE_DTYPE_FLOAT32 && dtype != TOKENGATE_DTYPE_FLOAT16)
    {
        return TOKENGATE_STATUS_BAD_DTYPE;
    }
    if (num_prefix < 1 || min_keep < 1)
    {
        return TOKENGATE_STATUS_BAD_ATTRIBUTE;
    }
    if (batch < 0 || channels < 1 || num_tokens < num_prefix)
    {
        return TOKENGATE_STATUS_BAD_SHAPE;
    }
    int64_t const elemBytes = dtype == TOKENGATE_DTYPE_FLOAT32 ? 4 : 2;
    if (batch > INT_MAX || num_tokens > INT_MAX || channels * elemBytes > INT_MAX)
    {
        return TOKENGATE_STATUS_TOO_LARGE;
    }
    bool const hasPatches = num_tokens > num_prefix;
    if (batch > 0
        && (x == nullptr || y == nullptr || lengths == nullptr || threshold == nullptr
            || (hasPatches && (scores == nullptr || workspace == nullptr))))
    {
        return TOKENGATE_STATUS_NULL_POINTER;
    }
    int const b = static_cast<int>(batch);
    int const n = static_cast<int>(num_tokens);
    int const p = static_cast<int>(num_prefix);
    int const minKeep = min_keep > INT_MAX ? INT_MAX : static_cast<int>(min_keep);
    auto* keptIdx = static_cast<int32_t*>(workspace);

    if (b > 0)
    {
        cudaError_t const status = dtype == TOKENGATE_DTYPE_FLOAT32
            ? launchCompact<float>(scores, threshold, keptIdx, lengths, b, n - p, p, minKeep, stream)
            : launchCompact<__half>(scores, threshold, keptIdx, lengths, b, n - p, p, minKeep, stream);
        if (status != cudaSuccess)
        {
            return static_cast<int32_t>(status);
        }
    }
    // Launched even for an empty batch: it still publishes K (= P) to k_out.
    cudaError_t const status = dispatchGather(
        x, keptIdx, lengths, y, k_out, b, n, p, static_cast<int>(channels * elemBytes), stream);
    return static_cast<int32_t>(status);
}

extern "C" TOKENGATE_API char const* tokengate_status_string(int32_t status)
{
    switch (status)
    {
    case TOKENGATE_STATUS_OK: return "success";
    case TOKENGATE_STATUS_BAD_DTYPE: return "unsupported dtype: expected float32 (0) or float16 (1)";
    case TOKENGATE_STATUS_BAD_SHAPE: return "bad shape: need batch >= 0, channels >= 1 and num_tokens >= num_prefix";
    case TOKENGATE_STATUS_BAD_ATTRIBUTE: return "bad attribute: need num_prefix >= 1 and min_keep >= 1";
    case TOKENGATE_STATUS_NULL_POINTER: return "a required device pointer is NULL";
    case TOKENGATE_STATUS_TOO_LARGE: return "a dimension exceeds the int32 range the kernels index with";
    default: return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown TokenGate status";
    }
}
