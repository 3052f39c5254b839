// keepsake/detail/process.hpp: who a process is (pid + start time, so a
// recycled pid is not mistaken for the old owner) and a few clock reads.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include <unistd.h>

namespace keepsake::detail {

// Start time of a process in clock ticks after boot (field 22 of
// /proc/PID/stat), or 0 when it cannot be read.
inline std::uint64_t process_start_time(long pid) {
    char path[64];
    std::snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    std::FILE* file = std::fopen(path, "re");
    if (!file) return 0;
    char text[1024];
    std::size_t length = std::fread(text, 1, sizeof(text) - 1, file);
    std::fclose(file);
    text[length] = '\0';
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'.
    const char* cursor = std::strrchr(text, ')');
    if (!cursor) return 0;
    int field = 2;
    for (; *cursor && field < 22; ++cursor)
        if (*cursor == ' ') ++field;
    unsigned long long ticks = 0;
    if (std::sscanf(cursor, "%llu", &ticks) != 1) return 0;
    return ticks;
}

// The wall clock to a few milliseconds (one load from the vDSO's page):
// for times people read and for ordering across reboots, on paths that
// should not pay for the precise clock.
inline std::uint64_t coarse_wall_clock_ns() noexcept {
    timespec now{};
    clock_gettime(CLOCK_REALTIME_COARSE, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(now.tv_nsec);
}

inline std::uint64_t wall_clock_ns() noexcept {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1000000000ull +
           static_cast<std::uint64_t>(now.tv_nsec);
}

} // namespace keepsake::detail
