// A fake CUDA driver for CPU tests of the plugin's launcher. It behaves like the real driver where that matters:
// it accepts a cubin only if its ELF names an SM the fake device can run, JIT-compiles PTX only if its .target is
// not above the device, and records every launch. Include once per executable, after matchingScoreKernel.cpp
// (so kImages are the launcher's own and loaded images can be identified).
#pragma once

#include <cstdlib>
#include <cstring>
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

struct FakeDevice
{
    int major = 8;
    int minor = 0;
    unsigned long long context = 1;
    bool failCubin = false; // a driver that rejects every cubin (too old for its ELF)
    std::vector<Load> loads;
    int launches = 0;
    unsigned grid = 0, block = 0, shared = 0;
    unsigned long long pointers[4] = {};
    int ints[4] = {};
    float scale = 0.0F;
    unsigned long long scratch[2] = {1, 1};
} gDevice;

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
    *pctx = reinterpret_cast<CUcontext>(0x1000);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetId(CUcontext, unsigned long long* ctxId)
{
    *ctxId = gDevice.context;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetDevice(CUdevice* device)
{
    *device = 0;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice)
{
    *pi = attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR ? gDevice.major : gDevice.minor;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuModuleLoadData(CUmodule* module, void const* image)
{
    int const index = imageOf(image, false);
    int const sm = cubinSm(static_cast<unsigned char const*>(image));
    bool const archSpecific = index >= 0 && k::kImages[index].archSpecific;
    int const device = gDevice.major * 10 + gDevice.minor;
    // SASS runs on the same major at an equal or higher minor; sm_XXa only on exactly XX.
    bool const runs = sm / 10 == gDevice.major && (archSpecific ? sm == device : sm <= device);
    bool const accepted = index >= 0 && runs && !gDevice.failCubin;
    gDevice.loads.push_back({"cubin", index, accepted});
    *module = reinterpret_cast<CUmodule>(0x2000);
    return accepted ? CUDA_SUCCESS : CUDA_ERROR_NO_BINARY_FOR_GPU;
}
CUresult CUDAAPI cuModuleLoadDataEx(CUmodule* module, void const* image, unsigned int, CUjit_option*, void**)
{
    int const index = imageOf(image, true);
    bool const accepted = index >= 0 && !k::kImages[index].archSpecific
        && ptxTarget(static_cast<char const*>(image)) <= gDevice.major * 10 + gDevice.minor;
    gDevice.loads.push_back({"ptx", index, accepted});
    *module = reinterpret_cast<CUmodule>(0x2000);
    return accepted ? CUDA_SUCCESS : CUDA_ERROR_INVALID_PTX;
}
CUresult CUDAAPI cuModuleUnload(CUmodule)
{
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuModuleGetFunction(CUfunction* hfunc, CUmodule, char const* name)
{
    *hfunc = reinterpret_cast<CUfunction>(0x3000);
    return std::strcmp(name, "matching_score_kernel") == 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
CUresult CUDAAPI cuFuncSetAttribute(CUfunction, CUfunction_attribute, int)
{
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuLaunchKernel(CUfunction, unsigned gridX, unsigned gridY, unsigned gridZ, unsigned blockX,
    unsigned blockY, unsigned blockZ, unsigned shared, CUstream, void** params, void** extra)
{
    if (gridY != 1 || gridZ != 1 || blockY != 1 || blockZ != 1 || extra != nullptr)
    {
        return CUDA_ERROR_INVALID_VALUE;
    }
    ++gDevice.launches;
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
