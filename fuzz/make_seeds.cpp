// Writes the fuzzers' starting corpora: OUT/<target>/<seed> for each target,
// made by the library itself (fuzz/entries/seeds.hpp).
//   keepsake_fuzz_seeds OUT
#include <cstdio>
#include <filesystem>
#include <string>

#include "entries/seeds.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: keepsake_fuzz_seeds OUT\n");
        return 2;
    }
    for (const char* target : keepsake_fuzz::seeds::targets) {
        const std::string directory = std::string(argv[1]) + "/" + target;
        std::filesystem::create_directories(directory);
        for (const auto& seed : keepsake_fuzz::seeds::for_target(target))
            keepsake_fuzz::write_file(directory + "/seed-" + seed.name, seed.bytes);
    }
    return 0;
}
