/*
 * C ABI of the TokenSelect CUDA kernels (tokengate::TokenSelect v1, DESIGN.md §3).
 *
 * Free of TensorRT types, so the TensorRT plugin, ctypes (pipeline/cuda_kernels.py) and any C program share it.
 * One call enqueues at most two kernels on `stream` and never synchronizes:
 *   1. compaction: per sample, a block-wide stable scan of keep flags (score > threshold, topped up to min_keep by
 *      rank) writes the kept patch indices to the workspace and lengths[b] = P + kept;
 *   2. gather: writes y [B, K, C] contiguous, K = max(lengths), zero rows past each sample's length; the grid is sized
 *      by the upper bound N and blocks past K exit. Block 0 also writes K to k_out.
 */
#ifndef TOKENGATE_TOKEN_SELECT_KERNEL_H
#define TOKENGATE_TOKEN_SELECT_KERNEL_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define TOKENGATE_API __declspec(dllexport)
#else
#define TOKENGATE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C"
{
#endif

/* Bumped whenever a signature below changes; ctypes callers check it. */
#define TOKENGATE_KERNELS_ABI_VERSION 1

/* Element type of x, scores, threshold and y. */
#define TOKENGATE_DTYPE_FLOAT32 0
#define TOKENGATE_DTYPE_FLOAT16 1

/* Status codes: 0 is success, negative codes are argument errors, positive codes are cudaError_t values. */
#define TOKENGATE_STATUS_OK 0
#define TOKENGATE_STATUS_BAD_DTYPE (-1)
#define TOKENGATE_STATUS_BAD_SHAPE (-2)
#define TOKENGATE_STATUS_BAD_ATTRIBUTE (-3)
#define TOKENGATE_STATUS_NULL_POINTER (-4)
#define TOKENGATE_STATUS_TOO_LARGE (-5)

TOKENGATE_API int32_t tokengate_kernels_abi_version(void);

/* Device workspace bytes for tokengate_token_select: the kept-index buffer, int32 [batch, num_tokens - num_prefix].
 * Returns 0 for invalid sizes (and when there are no patch tokens). */
TOKENGATE_API size_t tokengate_token_select_workspace_size(int64_t batch, int64_t num_tokens, int64_t num_prefix);

/* TokenSelect on device pointers.
 *   x          [batch, num_tokens, channels] of dtype
 *   scores     [batch, num_tokens - num_prefix] of dtype
 *   threshold  one element of dtype, in device memory
 *   y          room for [batch, num_tokens, channels] (the upper bound); [batch, K, channels] is written
 *   lengths    [batch] int32, written
 *   k_out      one int32, written with K (may be NULL)
 *   workspace  tokengate_token_select_workspace_size(...) bytes (may be NULL when that is 0)
 * Returns a TOKENGATE_STATUS_* code, or the cudaError_t of a failed launch. */
TOKENGATE_API int32_t tokengate_token_select(int32_t dtype, void const* x, void const* scores, void const* threshold,
    void* y, int32_t* lengths, int32_t* k_out, void* workspace, int64_t batch, int64_t num_tokens, int64_t channels,
    int64_t num_prefix, int64_t min_keep, cudaStream_t stream);

/* Static, human-readable text for a status returned above. */
TOKENGATE_API char const* tokengate_status_string(int32_t status);

#ifdef __cplusplus
}
#endif

#endif /* TOKENGATE_TOKEN_SELECT_KERNEL_H */
