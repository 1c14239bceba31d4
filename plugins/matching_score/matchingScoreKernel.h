// Launcher for the ahead-of-time compiled onerank::MatchingScore kernel (src/onerank_export/engine/kernel/matching_score.py).
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace onerank
{
namespace plugin
{

//! Sizes of one call: z [batch, tasks, dModel], r [batch, candidates, tasks, dModel], valid [batch, candidates].
//! valid is int32, nonzero = a real candidate (TensorRT plugins take no kBOOL input).
struct MatchingScoreShape
{
    int64_t batch;
    int64_t candidates;
    int64_t tasks;
    int64_t dModel;
};

//! Fixed-size text for the caller's log: the launcher runs inside noexcept enqueue and does not allocate.
struct LaunchMessage
{
    char text[320];
};

//! Score one batch on `stream` with the cubin (or PTX) for the device of the current CUDA context.
//! T is the input element type (float or __half); scores are always fp32.
//! Returns CUDA_SUCCESS, or the failing CUresult with `message` saying what failed. Never throws.
template <typename T>
CUresult launchMatchingScore(T const* z, T const* r, int32_t const* valid, float* scores,
    MatchingScoreShape const& shape, float scale, CUstream stream, LaunchMessage& message) noexcept;

} // namespace plugin
} // namespace onerank
