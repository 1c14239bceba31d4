// Runs the plugin's real kernel launcher (plugins/matching_score/matchingScoreKernel.cpp) against the fake CUDA
// driver in fake_cuda_driver.h. Used by tests/engine/test_kernel_aot.py; one JSON line per scenario on stdout.
//
//   launcher_harness "cc=86 dtype=fp32 b=2 n=7 k=3 d=64 misalign=0 fail_cubin=0 ctx=1 repeat=1" ...
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
        gDevice.context = static_cast<unsigned long long>(num("ctx"));
        gDevice.failCubin = num("fail_cubin") != 0;
        onerank::plugin::MatchingScoreShape const shape{num("b"), num("n"), num("k"), num("d")};
        auto const misalign = static_cast<size_t>(num("misalign"));
        onerank::plugin::LaunchMessage message{};
        CUresult status = CUDA_SUCCESS;
        std::string messages;
        for (long long r = 0; r < num("repeat"); ++r)
        {
            if (s.at("dtype") == "fp16")
            {
                auto const* z = reinterpret_cast<__half const*>(memory);
                status = onerank::plugin::launchMatchingScore(z, reinterpret_cast<__half const*>(memory + 1024 + misalign),
                    reinterpret_cast<int32_t const*>(memory + 2048), reinterpret_cast<float*>(memory + 3072), shape,
                    0.125F, nullptr, message);
            }
            else
            {
                auto const* z = reinterpret_cast<float const*>(memory);
                status = onerank::plugin::launchMatchingScore(z, reinterpret_cast<float const*>(memory + 1024 + misalign),
                    reinterpret_cast<int32_t const*>(memory + 2048), reinterpret_cast<float*>(memory + 3072), shape,
                    0.125F, nullptr, message);
            }
            messages += std::string(r ? "|" : "") + message.text;
        }
        auto const base = reinterpret_cast<unsigned long long>(memory);
        std::printf("{\"status\": %d, \"messages\": \"%s\", \"launches\": %d, \"loads\": [", static_cast<int>(status),
            messages.c_str(), gDevice.launches);
        for (size_t i = 0; i < gDevice.loads.size(); ++i)
        {
            Load const& l = gDevice.loads[i];
            int const sm = l.image >= 0 ? k::kImages[l.image].smMajor * 10 + k::kImages[l.image].smMinor : -1;
            std::printf("%s{\"kind\": \"%s\", \"sm\": %d, \"dtype\": %d, \"config\": \"%s\", \"accepted\": %s}",
                i ? ", " : "", l.kind.c_str(), sm, l.image >= 0 ? static_cast<int>(k::kImages[l.image].dtype) : -1,
                l.image >= 0 ? k::kLaunchConfigs[k::kImages[l.image].config].name : "?", l.accepted ? "true" : "false");
        }
        std::printf("], \"grid\": %u, \"block\": %u, \"shared\": %u, \"pointer_offsets\": [%llu, %llu, %llu, %llu], "
                    "\"ints\": [%d, %d, %d, %d], \"scale\": %g, \"scratch\": [%llu, %llu]}\n",
            gDevice.grid, gDevice.block, gDevice.shared, gDevice.pointers[0] - base, gDevice.pointers[1] - base,
            gDevice.pointers[2] - base, gDevice.pointers[3] - base, gDevice.ints[0], gDevice.ints[1], gDevice.ints[2],
            gDevice.ints[3], static_cast<double>(gDevice.scale), gDevice.scratch[0], gDevice.scratch[1]);
    }
    return 0;
}
