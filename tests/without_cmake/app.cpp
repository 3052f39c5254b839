// Built by tests/without_cmake_test.sh with the README's "Without CMake"
// command lines, nothing else: a unit crashes and restarts with its state,
// a keeper restores, the SQLite store takes an export.
#include <keepsake/keepsake.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>

struct counter { long value = 0; };

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string dir = argv[1];
    keepsake::segment_options options;
    options.directory = dir;
    keepsake::segment segment("without-cmake", options);
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});
    keepsake::unit_spec<counter> spec;
    spec.name = "counter";
    auto unit = keepsake::start_unit(runtime, spec);
    unit.call([](counter& c) { c.value += 41; });
    try {
        unit.call([](counter& c) { c.value = -1; throw std::runtime_error("bug"); });
        return 1;
    } catch (const keepsake::worker_crashed&) {
    }
    const long value = unit.call([](counter& c) { return ++c.value; });
    keepsake::stop_unit(runtime, unit);

    keepsake::sqlite_store store(dir + "/state.db");
    keepsake::exporter out(segment, store);
    if (!out.flush() || !store.get("counter")) return 1;
    std::printf("without cmake: %ld after a crash, exported\n", value);
    return value == 42 ? 0 : 1;
}
