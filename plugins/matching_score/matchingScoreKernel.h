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

//! At least the number of generated launch configurations (matchingScoreKernel.cpp static_asserts it).
constexpr int32_t kMaxLaunchConfigs = 4;

//! The kernels of one input type loaded into one CUDA context, one module per launch configuration. Each plugin
//! clone (one per TensorRT execution context) owns one: there is no process-wide cache, so nothing outlives the
//! clone and no context identity beyond the handle is needed while the CUDA context outlives the clone.
struct LoadedKernels
{
    CUcontext context{nullptr}; // the context the modules live in; nullptr: nothing loaded
    bool half{false};           // __half kernels (else float)
    CUmodule modules[kMaxLaunchConfigs]{};
    CUfunction functions[kMaxLaunchConfigs]{};
    int32_t images[kMaxLaunchConfigs]{};
};

//! Load every launch configuration's cubin (or PTX, JIT-compiled) for T and the device of the current CUDA
//! context into `kernels` (which must be empty). Module loads and JIT: call outside enqueue and stream capture.
//! `message` says which images were loaded, or what failed. Never throws.
template <typename T>
CUresult loadMatchingScoreKernels(LoadedKernels& kernels, LaunchMessage& message) noexcept;

//! Unload the modules with their own context pushed (the caller's may be another, or none) and empty `kernels`.
//! If that context is gone, so are its modules: nothing is unloaded and its error is returned.
CUresult unloadMatchingScoreKernels(LoadedKernels& kernels) noexcept;

//! Score one batch on `stream` with `kernels`, which must hold T's kernels loaded into the current CUDA context.
//! T is the input element type (float or __half); scores are always fp32. Loads and allocates nothing, so it
//! can be captured into a CUDA graph.
//! Returns CUDA_SUCCESS, or the failing CUresult with `message` saying what failed. Never throws.
template <typename T>
CUresult launchMatchingScore(T const* z, T const* r, int32_t const* valid, float* scores,
    MatchingScoreShape const& shape, float scale, LoadedKernels const& kernels, CUstream stream,
    LaunchMessage& message) noexcept;

} // namespace plugin
} // namespace onerank
