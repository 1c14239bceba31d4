// A fake CUDA driver for CPU tests of the plugin's launcher. It behaves like the real driver where that matters:
// it accepts a cubin only if its ELF names an SM the fake device can run, JIT-compiles PTX only if its .target is
// not above the device, and records every launch. Contexts come and go with handle values reused (a real driver
// may reuse them too); modules belong to the context current when they were loaded, die with it, and a function
// launched or a module unloaded from another context is an invalid handle. Module loads, unloads, allocations and
// launches are counted per phase (fakePhase). Include once per executable, after matchingScoreKernel.cpp
// (so kImages are the launcher's own and loaded images can be identified).
//
// No cuCtxGetId (CUDA 12.0+) and no cuGetProcAddress: the plugin must link and run against a driver without them.
// Any other driver function the plugin starts to call is a link error here, so it gets a fake on purpose.
#pragma once

#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace
{
namespace k = onerank::kernels;

struct Load
{
    std::string kind; // "cubin" | "ptx"
    int image;
    bool accepted;
};

struct Counts
{
    int moduleLoads = 0;   // cuModuleLoad* calls, accepted or not
    int moduleUnloads = 0; // cuModuleUnload calls
    int allocations = 0;   // cuMemAlloc* / cuMemHostAlloc calls
    int launches = 0;
};

struct FakeModule
{
    CUcontext context;
    int image;
    bool loaded;
};

constexpr uintptr_t kContextBase = 0x10000, kModuleBase = 0x200000, kFunctionBase = 0x300000, kHandleStep = 0x100;

struct FakeDevice
{
    int major = 8;
    int minor = 0;
    bool failCubin = false; // a driver that rejects every cubin (too old for its ELF)
    int failAfter = -1;     // >= 0: out of memory once this many modules were loaded
    std::vector<Load> loads;
    int launches = 0;
    int launchedImage = -1;
    unsigned grid = 0, block = 0, shared = 0;
    unsigned long long pointers[4] = {};
    int ints[4] = {};
    float scale = 0.0F;
    unsigned long long scratch[2] = {1, 1};

    std::vector<bool> contextAlive{true}; // slot i is context kContextBase + i * kHandleStep; slot 0 exists
    std::vector<CUcontext> stack{reinterpret_cast<CUcontext>(kContextBase)}; // back(): the current context
    std::vector<FakeModule> modules;      // slot i is module kModuleBase + i * kHandleStep (slots reused)
    int modulesLoaded = 0, modulesUnloaded = 0, modulesFreedWithContext = 0;
    int badUnloads = 0; // cuModuleUnload of a module not loaded, or not of the current context
    std::string phase = "setup";
    std::map<std::string, Counts> counts;
} gDevice;

Counts& counts()
{
    return gDevice.counts[gDevice.phase];
}

// Calls from now on count for `phase` (listed even if it makes none).
[[maybe_unused]] void fakePhase(char const* phase)
{
    gDevice.phase = phase;
    counts();
}

int contextSlot(CUcontext ctx)
{
    uintptr_t const v = reinterpret_cast<uintptr_t>(ctx);
    if (v < kContextBase || (v - kContextBase) % kHandleStep != 0)
    {
        return -1;
    }
    size_t const slot = (v - kContextBase) / kHandleStep;
    return slot < gDevice.contextAlive.size() && gDevice.contextAlive[slot] ? static_cast<int>(slot) : -1;
}

CUcontext current()
{
    return gDevice.stack.empty() ? nullptr : gDevice.stack.back();
}

// cuCtxCreate's part that matters here: the lowest free handle value, made current.
[[maybe_unused]] CUcontext fakeCreateContext()
{
    size_t slot = 0;
    while (slot < gDevice.contextAlive.size() && gDevice.contextAlive[slot])
    {
        ++slot;
    }
    if (slot == gDevice.contextAlive.size())
    {
        gDevice.contextAlive.push_back(false);
    }
    gDevice.contextAlive[slot] = true;
    auto const ctx = reinterpret_cast<CUcontext>(kContextBase + slot * kHandleStep);
    gDevice.stack.push_back(ctx);
    return ctx;
}

// cuCtxDestroy: its modules are freed with it, and it stops being current anywhere.
[[maybe_unused]] void fakeDestroyContext(CUcontext ctx)
{
    int const slot = contextSlot(ctx);
    if (slot < 0)
    {
        return;
    }
    gDevice.contextAlive[static_cast<size_t>(slot)] = false;
    for (FakeModule& m : gDevice.modules)
    {
        if (m.loaded && m.context == ctx)
        {
            m.loaded = false;
            ++gDevice.modulesFreedWithContext;
        }
    }
    std::vector<CUcontext> kept;
    for (CUcontext c : gDevice.stack)
    {
        if (c != ctx)
        {
            kept.push_back(c);
        }
    }
    gDevice.stack = kept;
}

// cuCtxSetCurrent: replaces the top of the stack.
[[maybe_unused]] void fakeSetCurrent(CUcontext ctx)
{
    if (gDevice.stack.empty())
    {
        gDevice.stack.push_back(ctx);
    }
    else
    {
        gDevice.stack.back() = ctx;
    }
}

int liveModules()
{
    int n = 0;
    for (FakeModule const& m : gDevice.modules)
    {
        n += m.loaded ? 1 : 0;
    }
    return n;
}

// A handle of `base` naming a loaded module of the current context, or -1.
int moduleOf(uintptr_t v, uintptr_t base)
{
    if (v < base || (v - base) % kHandleStep != 0 || (v - base) / kHandleStep >= gDevice.modules.size())
    {
        return -1;
    }
    int const index = static_cast<int>((v - base) / kHandleStep);
    FakeModule const& m = gDevice.modules[static_cast<size_t>(index)];
    return m.loaded && m.context == current() && contextSlot(m.context) >= 0 ? index : -1;
}

CUresult newModule(CUmodule* module, int image)
{
    if (gDevice.failAfter >= 0 && gDevice.modulesLoaded >= gDevice.failAfter)
    {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    size_t slot = 0;
    while (slot < gDevice.modules.size() && gDevice.modules[slot].loaded)
    {
        ++slot;
    }
    if (slot == gDevice.modules.size())
    {
        gDevice.modules.push_back({});
    }
    gDevice.modules[slot] = FakeModule{current(), image, true};
    ++gDevice.modulesLoaded;
    *module = reinterpret_cast<CUmodule>(kModuleBase + slot * kHandleStep);
    return CUDA_SUCCESS;
}

int imageOf(void const* p, bool ptx)
{
    for (int i = 0; i < k::kNumImages; ++i)
    {
        if (p == (ptx ? static_cast<void const*>(k::kImages[i].ptx) : static_cast<void const*>(k::kImages[i].cubin)))
        {
            return i;
        }
    }
    return -1;
}

// Which SM a cubin targets, from its ELF header: e_flags bits 0-7 (ABI v7 cubins, what ptxas 12.x writes).
int cubinSm(unsigned char const* elf)
{
    if (std::memcmp(elf, "\x7f" "ELF", 4) != 0 || (elf[18] | (elf[19] << 8)) != 190)
    {
        return -1;
    }
    uint32_t flags = 0;
    std::memcpy(&flags, elf + 48, sizeof(flags)); // e_flags of a 64-bit ELF
    return static_cast<int>(flags & 0xff);
}

int ptxTarget(char const* ptx)
{
    char const* t = std::strstr(ptx, ".target sm_");
    return t == nullptr ? -1 : std::atoi(t + std::strlen(".target sm_"));
}

CUresult allocation()
{
    ++counts().allocations;
    return CUDA_ERROR_OUT_OF_MEMORY;
}
} // namespace

extern "C"
{
CUresult CUDAAPI cuGetErrorName(CUresult error, char const** pStr)
{
    static thread_local char text[32];
    std::snprintf(text, sizeof(text), "CUresult(%d)", static_cast<int>(error));
    *pStr = text;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetCurrent(CUcontext* pctx)
{
    *pctx = current(); // nullptr, and CUDA_SUCCESS, when no context is current (as the driver does)
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxPushCurrent(CUcontext ctx)
{
    if (contextSlot(ctx) < 0)
    {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    gDevice.stack.push_back(ctx);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxPopCurrent(CUcontext* pctx)
{
    if (gDevice.stack.empty())
    {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *pctx = gDevice.stack.back();
    gDevice.stack.pop_back();
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetDevice(CUdevice* device)
{
    *device = 0;
    return contextSlot(current()) >= 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}
CUresult CUDAAPI cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice)
{
    *pi = attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? gDevice.major : gDevice.minor;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuModuleLoadData(CUmodule* module, void const* image)
{
    ++counts().moduleLoads;
    int const index = imageOf(image, false);
    int const sm = cubinSm(static_cast<unsigned char const*>(image));
    bool const archSpecific = index >= 0 && k::kImages[index].archSpecific;
    int const device = gDevice.major * 10 + gDevice.minor;
    // SASS runs on the same major at an equal or higher minor; sm_XXa only on exactly XX.
    bool const runs = sm / 10 == gDevice.major && (archSpecific ? sm == device : sm <= device);
    bool const accepted = index >= 0 && runs && !gDevice.failCubin;
    gDevice.loads.push_back({"cubin", index, accepted});
    if (contextSlot(current()) < 0)
    {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    return accepted ? newModule(module, index) : CUDA_ERROR_NO_BINARY_FOR_GPU;
}
CUresult CUDAAPI cuModuleLoadDataEx(CUmodule* module, void const* image, unsigned int, CUjit_option*, void**)
{
    ++counts().moduleLoads;
    int const index = imageOf(image, true);
    bool const accepted = index >= 0 && !k::kImages[index].archSpecific
        && ptxTarget(static_cast<char const*>(image)) <= gDevice.major * 10 + gDevice.minor;
    gDevice.loads.push_back({"ptx", index, accepted});
    if (contextSlot(current()) < 0)
    {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    return accepted ? newModule(module, index) : CUDA_ERROR_INVALID_PTX;
}
CUresult CUDAAPI cuModuleLoad(CUmodule*, char const*)
{
    ++counts().moduleLoads;
    return CUDA_ERROR_FILE_NOT_FOUND;
}
CUresult CUDAAPI cuModuleLoadFatBinary(CUmodule*, void const*)
{
    ++counts().moduleLoads;
    return CUDA_ERROR_NO_BINARY_FOR_GPU;
}
CUresult CUDAAPI cuModuleUnload(CUmodule module)
{
    ++counts().moduleUnloads;
    int const index = moduleOf(reinterpret_cast<uintptr_t>(module), kModuleBase);
    if (index < 0)
    {
        ++gDevice.badUnloads;
        return CUDA_ERROR_INVALID_HANDLE;
    }
    gDevice.modules[static_cast<size_t>(index)].loaded = false;
    ++gDevice.modulesUnloaded;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuModuleGetFunction(CUfunction* hfunc, CUmodule module, char const* name)
{
    int const index = moduleOf(reinterpret_cast<uintptr_t>(module), kModuleBase);
    if (index < 0)
    {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    *hfunc = reinterpret_cast<CUfunction>(kFunctionBase + static_cast<uintptr_t>(index) * kHandleStep);
    return std::strcmp(name, "matching_score_kernel") == 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
CUresult CUDAAPI cuFuncSetAttribute(CUfunction, CUfunction_attribute, int)
{
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemAlloc(CUdeviceptr*, size_t)
{
    return allocation();
}
CUresult CUDAAPI cuMemAllocPitch(CUdeviceptr*, size_t*, size_t, size_t, unsigned int)
{
    return allocation();
}
CUresult CUDAAPI cuMemAllocManaged(CUdeviceptr*, size_t, unsigned int)
{
    return allocation();
}
CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr*, size_t, CUstream)
{
    return allocation();
}
CUresult CUDAAPI cuMemAllocHost(void**, size_t)
{
    return allocation();
}
CUresult CUDAAPI cuMemHostAlloc(void**, size_t, unsigned int)
{
    return allocation();
}
CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned gridX, unsigned gridY, unsigned gridZ, unsigned blockX,
    unsigned blockY, unsigned blockZ, unsigned shared, CUstream, void** params, void** extra)
{
    int const index = moduleOf(reinterpret_cast<uintptr_t>(f), kFunctionBase);
    if (index < 0)
    {
        return CUDA_ERROR_INVALID_HANDLE; // a function of an unloaded module, or of another context
    }
    if (gridY != 1 || gridZ != 1 || blockY != 1 || blockZ != 1 || extra != nullptr)
    {
        return CUDA_ERROR_INVALID_VALUE;
    }
    ++counts().launches;
    ++gDevice.launches;
    gDevice.launchedImage = gDevice.modules[static_cast<size_t>(index)].image;
    gDevice.grid = gridX;
    gDevice.block = blockX;
    gDevice.shared = shared;
    for (int i = 0; i < 4; ++i)
    {
        std::memcpy(&gDevice.pointers[i], params[i], sizeof(CUdeviceptr));
        std::memcpy(&gDevice.ints[i], params[4 + i], sizeof(int32_t));
    }
    std::memcpy(&gDevice.scale, params[8], sizeof(float));
    std::memcpy(&gDevice.scratch[0], params[9], sizeof(CUdeviceptr));
    std::memcpy(&gDevice.scratch[1], params[10], sizeof(CUdeviceptr));
    return CUDA_SUCCESS;
}
} // extern "C"
