// tests/support.hpp: helpers shared by keepsake's tests.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <keepsake/keepsake.hpp>
#include <keepsake/testing.hpp>

namespace test_support {

// Where a key's slots lie in a segment file (its active region), read from
// the directory as a forensic tool would: for tests that damage bytes.
struct slot_place {
    std::uint64_t first = 0;     // file offset of slot 0's header
    std::uint64_t capacity = 0;  // data bytes per slot
    std::uint32_t count = 0;
    std::uint64_t tag = 0;
    std::uint64_t header(std::uint32_t slot) const { return first + slot * keepsake::detail::slot_stride(capacity); }
    std::uint64_t data(std::uint32_t slot) const { return header(slot) + sizeof(keepsake::detail::slot_header); }
};

// `key` empty: the first key in the directory.
inline slot_place find_slots(const std::string& bytes, const std::string& key = {}) {
    using namespace keepsake::detail;
    segment_header header{};
    std::memcpy(&header, bytes.data(), sizeof(header));
    for (std::uint32_t b = 0; b < header.block_count && b < max_directory_blocks; ++b) {
        for (std::uint32_t i = 0; i < header.blocks[b].count; ++i) {
            dir_entry entry{};
            std::memcpy(&entry, bytes.data() + header.blocks[b].offset + i * sizeof(dir_entry), sizeof(entry));
            if (entry.state != entry_ready || (!key.empty() && std::string(entry.key, entry.key_length) != key))
                continue;
            const region_desc& region = entry.regions[entry.active & 1];
            return slot_place{region.offset, region.capacity, region.count, slot_tag(entry.nonce, region.serial)};
        }
    }
    throw std::runtime_error("no key '" + key + "' in the segment's directory");
}

inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline slot_place find_slots_in_file(const std::string& path, const std::string& key = {}) {
    return find_slots(read_file(path), key);
}

// Cuts every slot of `key` to `size` bytes and re-seals it with a valid
// checksum: what a type change looks like to restore (the bytes are what
// was committed, they just do not make this type).
inline void reseal_slots(const std::string& path, const std::string& key, std::uint64_t size) {
    using namespace keepsake::detail;
    const test_support::slot_place place = find_slots_in_file(path, key);
    std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
    for (std::uint32_t slot = 0; slot < place.count; ++slot) {
        slot_header header{};
        io.seekg(static_cast<std::streamoff>(place.header(slot)));
        io.read(reinterpret_cast<char*>(&header), sizeof(header));
        if (header.generation == 0) continue;
        std::string data(size, '\0');
        io.read(data.data(), static_cast<std::streamsize>(size));
        header.size = size;
        header.checksum = slot_checksum(header.generation, header.size, header.fingerprint, header.schema_version,
                                        header.codec, data.data(), header.commit_ns, header.tag);
        io.seekp(static_cast<std::streamoff>(place.header(slot)));
        io.write(reinterpret_cast<const char*>(&header), sizeof(header));
    }
}

// ThreadSanitizer keeps one shadow call stack per thread and cannot follow a
// fiber that moves to another thread (Debian's Boost.Context does not tell
// it about switches): its own runtime crashes. Work sharing is tested in the
// other builds.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool fibers_may_move_threads = false;
#else
inline constexpr bool fibers_may_move_threads = true;
#endif

// A private directory below `parent` for one test, removed after: a
// temp_dir on a real disk (/tmp) for stores, an shm_dir in /dev/shm for
// segments.
class temp_dir {
public:
    explicit temp_dir(const std::string& parent = std::filesystem::temp_directory_path().string()) {
        static std::atomic<int> counter{0};
        path_ = parent + "/keepsake-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
        std::filesystem::remove_all(path_);
        std::filesystem::create_directories(path_);
    }
    ~temp_dir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    const std::string& path() const { return path_; }

private:
    std::string path_;
};

class shm_dir : public temp_dir {
public:
    shm_dir() : temp_dir("/dev/shm") {}

    std::string file(const std::string& name) const { return path() + "/keepsake." + name; }
    keepsake::segment_options options(std::uint64_t size = 1u << 20, std::uint32_t max_entries = 64) const {
        keepsake::segment_options options;
        options.directory = path();
        options.size = size;
        options.max_entries = max_entries;
        return options;
    }
};

// A state whose every word follows from its generation, so a torn or mixed
// copy is detected: blob<N> is N bytes.
template <std::size_t N>
struct blob {
    static_assert(N >= 16 && N % 8 == 0);
    std::uint64_t generation;
    std::uint64_t words[(N - 8) / 8];

    static void make(blob& out, std::uint64_t generation) {
        out.generation = generation;
        for (std::size_t i = 0; i < sizeof(words) / 8; ++i) out.words[i] = generation * 0x9E3779B97F4A7C15ull + i;
    }
    bool consistent() const {
        for (std::size_t i = 0; i < sizeof(words) / 8; ++i)
            if (words[i] != generation * 0x9E3779B97F4A7C15ull + i) return false;
        return true;
    }
};

// Memory a forked child and its parent both see.
template <class T>
T* shared_anonymous() {
    return keepsake::testing::shared_between_processes<T>();
}
using keepsake::testing::release_shared;

// Forks a child that runs `body` and never returns into the test runner.
using keepsake::testing::fork_child;

inline void kill_and_reap(pid_t pid) {
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
}

// Waits until `ready` is set or the child exits; false on exit or timeout.
inline bool wait_ready(const std::atomic<int>& ready, pid_t pid, std::chrono::seconds limit = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (ready.load(std::memory_order_acquire) == 0) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) return false;
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
}

// Waits (sleeping `every` between looks) until `done()` holds or `limit`
// has passed, and returns done(): for what another thread or process does
// in its own time, which a loaded machine may delay by seconds.
template <class Done>
bool wait_until(Done&& done, std::chrono::milliseconds limit = std::chrono::seconds(10),
                std::chrono::milliseconds every = std::chrono::milliseconds(1)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(every);
    return done();
}

// Pumps a pumped runtime until `done()` holds or `limit` (real time) has
// passed, and returns done(). For a test whose fibers stay ready (one spins
// on yield) so run_for spends its whole budget: a loaded machine or a
// sanitizer can need far more than a fixed budget gives.
template <class Done>
bool pump_until(keepsake::runtime& where, Done&& done, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < deadline) where.run_for(std::chrono::milliseconds(5));
    return done();
}

// The keepsake::error `action` throws; a test that expected one fails with
// a logic_error when none comes.
template <class Action>
keepsake::error error_from(Action&& action) {
    try {
        action();
    } catch (const keepsake::error& failure) {
        return failure;
    }
    throw std::logic_error("expected a keepsake::error, and none was thrown");
}

inline int env_count(const char* name, int fallback) {
    const char* value = std::getenv(name);
    return value && *value ? std::atoi(value) : fallback;
}

} // namespace test_support
