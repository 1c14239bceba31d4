// The plugin's kernel-module lifecycle across CUDA contexts, as TensorRT drives it: each execution context gets a
// clone (attachToContext), onShapeChange loads the kernels into the current CUDA context, enqueue only launches,
// and deleting the clone unloads them. Part of plugin_harness.cpp (uses its CHECK, Recorder, ResourceContext and
// gLogger, and fake_cuda_driver.h); split out to keep each file readable.
#pragma once

#include <set>

namespace
{

// A clone attached in a new CUDA context, its kernels loaded by onShapeChange; nullptr (clone deleted) on failure.
IPluginV3* attachInNewContext(IPluginV3OneRuntime& prototype, ResourceContext& context, CUcontext& cuda,
    PluginTensorDesc const* inDesc, PluginTensorDesc const& scoresDesc)
{
    cuda = fakeCreateContext();
    IPluginV3* clone = prototype.attachToContext(&context);
    if (clone == nullptr)
    {
        return nullptr;
    }
    auto* run = static_cast<IPluginV3OneRuntime*>(clone->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (run->onShapeChange(inDesc, 3, &scoresDesc, 1) != 0)
    {
        delete clone;
        return nullptr;
    }
    return clone;
}

int32_t enqueueOn(IPluginV3* clone, PluginTensorDesc const* inDesc, PluginTensorDesc const& scoresDesc,
    void const* const* inputs, void* const* outputs)
{
    auto* run = static_cast<IPluginV3OneRuntime*>(clone->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return run->enqueue(inDesc, &scoresDesc, inputs, outputs, nullptr, nullptr);
}

// A copy of a plugin whose kernels are loaded is as ready to run as its source: IPluginV3::clone() returns an object
// "in a fully initialized state" (NvInferPluginBase.h), and NVIDIA's cubin plugins build their kernels in every
// constructor, clones included. So a builder that prepares a plugin and then enqueues a clone or an attached copy
// of it (no onShapeChange on the copy) must launch. The copy loads its own modules when made, in the same CUDA
// context only (elsewhere its onShapeChange loads them), never in enqueue, and never shares its source's.
void checkCopiesOfPreparedPlugin(IPluginV3OneRuntime& run, PluginTensorDesc const* fp16,
    PluginTensorDesc const& scoresDesc, void const* const* inputs, void* const* outputs)
{
    int const kConfigs = k::kNumLaunchConfigs;
    int const live = liveModules();
    Recorder recorder;
    ResourceContext context(&recorder);
    fakePhase("copy prepared");
    IPluginV3* cloned = static_cast<onerank::plugin::MatchingScorePlugin&>(run).clone();
    IPluginV3* attached = run.attachToContext(&context);
    CHECK(cloned != nullptr && attached != nullptr);
    if (cloned == nullptr || attached == nullptr)
    {
        return;
    }
    CHECK(gDevice.counts["copy prepared"].moduleLoads == 2 * kConfigs && liveModules() == live + 2 * kConfigs);
    fakePhase("enqueue copy");
    CHECK(enqueueOn(cloned, fp16, scoresDesc, inputs, outputs) == 0);
    CHECK(enqueueOn(attached, fp16, scoresDesc, inputs, outputs) == 0);
    CHECK(gDevice.counts["enqueue copy"].moduleLoads == 0 && gDevice.counts["enqueue copy"].launches == 2);
    CHECK(recorder.errors.empty());
    delete cloned;
    delete attached;
    CHECK(liveModules() == live && recorder.refs == 0 && gDevice.badUnloads == 0);
    CHECK(run.enqueue(fp16, &scoresDesc, inputs, outputs, nullptr, nullptr) == 0); // the source's own modules

    CUcontext const elsewhere = fakeCreateContext();
    fakePhase("copy elsewhere");
    IPluginV3* far = run.attachToContext(&context);
    CHECK(far != nullptr && gDevice.counts["copy elsewhere"].moduleLoads == 0);
    delete far;
    fakeDestroyContext(elsewhere);
}

void checkRuntimeLifecycle(IPluginV3OneRuntime& prototype, IPluginV3OneRuntime& run, PluginTensorDesc const* fp16,
    PluginTensorDesc const& scoresDesc, void const* const* inputs, void* const* outputs)
{
    PluginTensorDesc fp32[3] = {fp16[0], fp16[1], fp16[2]};
    fp32[0].type = fp32[1].type = DataType::kFLOAT;
    int const kConfigs = k::kNumLaunchConfigs;

    // `run` holds fp16 kernels of the default context. Enqueued from another context: refused, nothing loaded.
    CUcontext const home = current();
    CUcontext const elsewhere = fakeCreateContext();
    fakePhase("enqueue elsewhere");
    CHECK(run.enqueue(fp16, &scoresDesc, inputs, outputs, nullptr, nullptr) == CUDA_ERROR_INVALID_CONTEXT);
    CHECK(gDevice.counts["enqueue elsewhere"].moduleLoads == 0 && gDevice.counts["enqueue elsewhere"].launches == 0);
    CHECK(!gLogger.errors.empty() && gLogger.errors.back().find("one execution context must run in one CUDA")
        != std::string::npos);
    fakeDestroyContext(elsewhere);
    CHECK(current() == home);

    // A new input type: the old modules are unloaded, the new type's loaded.
    int const unloadedBefore = gDevice.modulesUnloaded;
    CHECK(run.onShapeChange(fp32, 3, &scoresDesc, 1) == 0 && liveModules() == kConfigs);
    CHECK(gDevice.modulesUnloaded == unloadedBefore + kConfigs);
    CHECK(run.enqueue(fp32, &scoresDesc, inputs, outputs, nullptr, nullptr) == 0);
    CHECK(k::kImages[gDevice.launchedImage].dtype == k::ScoreDtype::kFLOAT32);
    CHECK(run.onShapeChange(fp16, 3, &scoresDesc, 1) == 0 && liveModules() == kConfigs);

    // A device without an image (this harness embeds sm_80 and sm_86 only): onShapeChange says why; enqueue then
    // refuses without loading anything.
    Recorder t4Recorder;
    ResourceContext t4Context(&t4Recorder);
    gDevice.major = 7;
    gDevice.minor = 5;
    CUcontext t4 = nullptr;
    IPluginV3* t4Clone = attachInNewContext(prototype, t4Context, t4, fp16, scoresDesc);
    CHECK(t4Clone == nullptr && t4Recorder.errors.size() == 1);
    CHECK(!t4Recorder.errors.empty() && t4Recorder.errors[0].find("sm_75") != std::string::npos);
    CHECK(!gLogger.errors.empty() && gLogger.errors.back().find("sm_75") != std::string::npos);
    t4Clone = prototype.attachToContext(&t4Context); // enqueue with no (successful) onShapeChange
    fakePhase("enqueue unloaded");
    CHECK(enqueueOn(t4Clone, fp16, scoresDesc, inputs, outputs) == CUDA_ERROR_NOT_INITIALIZED);
    CHECK(gDevice.counts["enqueue unloaded"].moduleLoads == 0 && gDevice.counts["enqueue unloaded"].launches == 0);
    CHECK(!t4Recorder.errors.empty() && t4Recorder.errors.back().find("no fp16 kernels loaded before enqueue")
        != std::string::npos);
    delete t4Clone;
    CHECK(t4Recorder.refs == 0);
    fakeDestroyContext(t4);
    gDevice.major = 8;
    gDevice.minor = 6;

    // Execution contexts in CUDA contexts of their own: 20 alive at once (a process-wide cache once stopped at 16),
    // then 100 created and destroyed in turn, the driver reusing context and module handle values; fp16 and fp32.
    Recorder cycleRecorder;
    ResourceContext cycleContext(&cycleRecorder);
    // Their prototype has kernels of its own (as after the builder's onShapeChange): clones must load their own,
    // never share or unload the prototype's.
    IPluginV3* base = prototype.attachToContext(&cycleContext);
    auto& baseRun = *static_cast<IPluginV3OneRuntime*>(base->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(baseRun.onShapeChange(fp16, 3, &scoresDesc, 1) == 0 && liveModules() == 2 * kConfigs);
    int const loadedBefore = gDevice.modulesLoaded, unloadsBefore = gDevice.modulesUnloaded;
    int const launchesBefore = gDevice.launches;
    int failures = 0, enqueues = 0;
    std::set<CUcontext> handles;
    std::vector<std::pair<CUcontext, IPluginV3*>> alive(20);
    for (size_t i = 0; i < alive.size(); ++i)
    {
        fakePhase("cycle setup");
        alive[i].second = attachInNewContext(baseRun, cycleContext, alive[i].first, i % 2 ? fp32 : fp16, scoresDesc);
        failures += alive[i].second == nullptr ? 1 : 0;
    }
    for (int round = 0; round < 2; ++round)
    {
        for (size_t i = 0; i < alive.size() && alive[i].second != nullptr; ++i)
        {
            fakeSetCurrent(alive[i].first);
            fakePhase("cycle enqueue");
            failures += enqueueOn(alive[i].second, i % 2 ? fp32 : fp16, scoresDesc, inputs, outputs) != 0 ? 1 : 0;
            ++enqueues;
        }
    }
    for (auto& [cuda, clone] : alive)
    {
        handles.insert(cuda);
        fakePhase("cycle teardown");
        delete clone;
        fakeDestroyContext(cuda);
    }
    for (int cycle = 0; cycle < 100; ++cycle)
    {
        PluginTensorDesc const* desc = cycle % 2 ? fp32 : fp16;
        fakePhase("cycle setup");
        CUcontext cuda = nullptr;
        IPluginV3* clone = attachInNewContext(baseRun, cycleContext, cuda, desc, scoresDesc);
        handles.insert(cuda);
        failures += clone == nullptr ? 1 : 0;
        fakePhase("cycle enqueue");
        for (int i = 0; i < 2 && clone != nullptr; ++i, ++enqueues)
        {
            failures += enqueueOn(clone, desc, scoresDesc, inputs, outputs) != 0 ? 1 : 0;
        }
        fakePhase("cycle teardown");
        delete clone;
        fakeDestroyContext(cuda);
    }
    CHECK(failures == 0 && enqueues == 240 && gDevice.launches == launchesBefore + 240);
    CHECK(cycleRecorder.errors.empty() && cycleRecorder.refs == 1); // base's
    Counts const inEnqueue = gDevice.counts["cycle enqueue"];
    CHECK(inEnqueue.moduleLoads == 0 && inEnqueue.allocations == 0 && inEnqueue.launches == 240);
    CHECK(gDevice.modulesLoaded - loadedBefore == 120 * kConfigs);
    CHECK(gDevice.modulesUnloaded - unloadsBefore == 120 * kConfigs && gDevice.badUnloads == 0);
    CHECK(liveModules() == 2 * kConfigs); // `run`'s and base's
    CHECK(handles.size() == 20);          // the 100 cycles all reused one of the first 20 handle values
    CHECK(current() == home);
    CHECK(baseRun.enqueue(fp16, &scoresDesc, inputs, outputs, nullptr, nullptr) == 0);
    delete base;
    CHECK(cycleRecorder.refs == 0 && liveModules() == kConfigs && gDevice.badUnloads == 0);

    // Contract broken (the CUDA context destroyed before its execution context): the modules died with the
    // context; deleting the clone must neither crash nor unload someone else's module.
    CUcontext gone = nullptr;
    IPluginV3* orphan = attachInNewContext(prototype, cycleContext, gone, fp16, scoresDesc);
    CHECK(orphan != nullptr);
    int const freedBefore = gDevice.modulesFreedWithContext;
    fakeDestroyContext(gone);
    CHECK(gDevice.modulesFreedWithContext == freedBefore + kConfigs);
    delete orphan;
    CHECK(gDevice.badUnloads == 0 && liveModules() == kConfigs);
}

} // namespace
