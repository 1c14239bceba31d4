// Runs the plugin's real kernel launcher (plugins/matching_score/matchingScoreKernel.cpp) against the fake CUDA
// driver in fake_cuda_driver.h. Used by tests/engine/kernel/test_kernel_aot.py; one JSON line per scenario on stdout.
//
// Per scenario: load the kernels for its dtype (phase "load"), launch `repeat` times (phase "launch"), unload
// (phase "unload"); the driver calls of each phase are counted.
//
//   launcher_harness "cc=86 dtype=fp32 b=2 n=7 k=3 d=64 misalign=0 fail_cubin=0 fail_after=-1 switch_ctx=0
//                     repeat=1" ...      (one argument per scenario)
#include "matchingScoreKernel.cpp" // one translation unit: kImages here are the launcher's own

#include "fake_cuda_driver.h"

#include <map>
#include <sstream>

int main(int argc, char** argv)
{
    alignas(256) static unsigned char memory[4096];
    for (int a = 1; a < argc; ++a)
    {
        std::map<std::string, std::string> s;
        std::istringstream words(argv[a]);
        for (std::string word; words >> word;)
        {
            s[word.substr(0, word.find('='))] = word.substr(word.find('=') + 1);
        }
        auto num = [&](char const* key) { return std::stoll(s.at(key)); };
        int const cc = static_cast<int>(num("cc"));
        gDevice = FakeDevice{}; // nothing recorded by an earlier scenario survives
        gDevice.major = cc / 10;
        gDevice.minor = cc % 10;
        gDevice.failCubin = num("fail_cubin") != 0;
        gDevice.failAfter = static_cast<int>(num("fail_after"));
        onerank::plugin::MatchingScoreShape const shape{num("b"), num("n"), num("k"), num("d")};
        auto const misalign = static_cast<size_t>(num("misalign"));
        bool const half = s.at("dtype") == "fp16";
        onerank::plugin::LoadedKernels kernels{};
        onerank::plugin::LaunchMessage message{};
        fakePhase("load");
        CUresult status = half ? onerank::plugin::loadMatchingScoreKernels<__half>(kernels, message)
                               : onerank::plugin::loadMatchingScoreKernels<float>(kernels, message);
        std::string messages = message.text;
        if (num("switch_ctx") != 0)
        {
            fakeCreateContext(); // launches run in a context the kernels were not loaded into
        }
        fakePhase("launch");
        for (long long r = 0; status == CUDA_SUCCESS && r < num("repeat"); ++r)
        {
            if (half)
            {
                auto const* z = reinterpret_cast<__half const*>(memory);
                auto const* r = reinterpret_cast<__half const*>(memory + 1024 + misalign);
                status = onerank::plugin::launchMatchingScore(z, r, reinterpret_cast<int32_t const*>(memory + 2048),
                    reinterpret_cast<float*>(memory + 3072), shape, 0.125F, kernels, nullptr, message);
            }
            else
            {
                auto const* z = reinterpret_cast<float const*>(memory);
                auto const* r = reinterpret_cast<float const*>(memory + 1024 + misalign);
                status = onerank::plugin::launchMatchingScore(z, r, reinterpret_cast<int32_t const*>(memory + 2048),
                    reinterpret_cast<float*>(memory + 3072), shape, 0.125F, kernels, nullptr, message);
            }
            messages += std::string("|") + message.text;
        }
        fakePhase("unload");
        CUresult const unloaded = onerank::plugin::unloadMatchingScoreKernels(kernels);
        auto const base = reinterpret_cast<unsigned long long>(memory);
        std::printf("{\"status\": %d, \"unload_status\": %d, \"messages\": \"%s\", \"launches\": %d, \"loads\": [",
            static_cast<int>(status), static_cast<int>(unloaded), messages.c_str(), gDevice.launches);
        auto image = [](int i) {
            char text[96];
            std::snprintf(text, sizeof(text), "\"sm\": %d, \"dtype\": %d, \"config\": \"%s\"",
                i >= 0 ? k::kImages[i].smMajor * 10 + k::kImages[i].smMinor : -1,
                i >= 0 ? static_cast<int>(k::kImages[i].dtype) : -1,
                i >= 0 ? k::kLaunchConfigs[k::kImages[i].config].name : "?");
            return std::string(text);
        };
        for (size_t i = 0; i < gDevice.loads.size(); ++i)
        {
            Load const& l = gDevice.loads[i];
            std::printf("%s{\"kind\": \"%s\", %s, \"accepted\": %s}", i ? ", " : "", l.kind.c_str(),
                image(l.image).c_str(), l.accepted ? "true" : "false");
        }
        std::printf("], \"launched\": {%s}, \"calls\": {", image(gDevice.launchedImage).c_str());
        char const* separator = "";
        for (auto const& [phase, c] : gDevice.counts)
        {
            std::printf("%s\"%s\": {\"module_loads\": %d, \"module_unloads\": %d, \"allocations\": %d, "
                        "\"launches\": %d}", separator, phase.c_str(), c.moduleLoads, c.moduleUnloads, c.allocations,
                c.launches);
            separator = ", ";
        }
        std::printf("}, \"live_modules\": %d, \"bad_unloads\": %d, ", liveModules(), gDevice.badUnloads);
        std::printf("\"grid\": %u, \"block\": %u, \"shared\": %u, \"pointer_offsets\": [%llu, %llu, %llu, %llu], "
                    "\"ints\": [%d, %d, %d, %d], \"scale\": %g, \"scratch\": [%llu, %llu]}\n",
            gDevice.grid, gDevice.block, gDevice.shared, gDevice.pointers[0] - base, gDevice.pointers[1] - base,
            gDevice.pointers[2] - base, gDevice.pointers[3] - base, gDevice.ints[0], gDevice.ints[1], gDevice.ints[2],
            gDevice.ints[3], static_cast<double>(gDevice.scale), gDevice.scratch[0], gDevice.scratch[1]);
    }
    return 0;
}
