// fuzz/entries/common.hpp: what the fuzz entries share. Each entry (one
// header per target) is compiled twice: into its libFuzzer target
// (fuzz/target.cpp) and into the regression tests of the normal suite
// (tests/fuzz_regression_test.cpp), which feed it every input that ever
// failed (tests/regressions/<target>/).
//
// An entry treats a keepsake::error as an expected outcome: hostile bytes
// must give one. Anything else is a finding: another exception type, a
// broken invariant (a commit that restore does not give back, a key that
// changed under another key's commit), and, left to the sanitizers, a
// crash, undefined behaviour, a leak or an allocation above the bound.
// A finding aborts in the fuzzer (so libFuzzer saves the input) and throws
// `finding` in the tests (so Catch2 reports it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include <keepsake/codec.hpp>
#include <keepsake/error.hpp>
#include <keepsake/keeper.hpp>
#include <keepsake/recovery.hpp>
#include <keepsake/segment.hpp>
#include <keepsake/store.hpp>

namespace keepsake_fuzz {

// --- the states the entries keep ----------------------------------------
// One of each codec case the issue names: a raw aggregate with a bool and
// an enum class, a bare bool and a plain pod (raw), a std::string and a
// struct with a vector and a map (cereal). A serialize() on the raw ones is
// for keepsake-inspect's JSON only; they are still stored as their bytes.
enum class mode : std::uint8_t { idle = 0, run = 1, stop = 2 };

struct flags {
    std::uint32_t count;
    bool on;
    mode state;
    std::int16_t level;
    double ratio;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(count, on, state, level, ratio);
    }
};

struct pod {
    std::uint64_t a;
    std::uint64_t b;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(a, b);
    }
};

struct inventory {
    std::string owner;
    std::vector<std::int32_t> items;
    std::map<std::string, std::int64_t> counts;
    bool open = false;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(owner, items, counts, open);
    }
    bool operator==(const inventory& other) const {
        return owner == other.owner && items == other.items && counts == other.counts && open == other.open;
    }
};

// What an older program kept under "inv": the upgrade hook decodes it.
struct inventory_v0 {
    std::string owner;
    std::vector<std::int32_t> items;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(owner, items);
    }
};

static_assert(keepsake::codec_of<flags>() == keepsake::codec_kind::raw);
static_assert(keepsake::codec_of<pod>() == keepsake::codec_kind::raw);
static_assert(keepsake::codec_of<bool>() == keepsake::codec_kind::raw);
static_assert(keepsake::codec_of<inventory>() == keepsake::codec_kind::cereal_binary);

template <class T>
struct tag {
    using type = T;
};

// Every kept type with its key, in one order: an entry picks one by index.
inline constexpr std::size_t kind_count = 5;

template <class F>
void for_each_kind(F&& each) {
    each(tag<std::string>{}, "str");
    each(tag<bool>{}, "bool");
    each(tag<pod>{}, "pod");
    each(tag<flags>{}, "flags");
    each(tag<inventory>{}, "inv");
}

template <class F>
void with_kind(std::size_t index, F&& body) {
    std::size_t at = 0;
    for_each_kind([&](auto kind, const char* key) {
        if (at++ == index % kind_count) body(kind, key);
    });
}

template <class T>
const char* key_of() {
    const char* found = nullptr;
    for_each_kind([&](auto kind, const char* key) {
        if (std::is_same_v<typename decltype(kind)::type, T>) found = key;
    });
    return found;
}

// The kind whose key is `key`, or nothing.
inline std::optional<std::size_t> kind_of_key(const std::string& key) {
    std::optional<std::size_t> found;
    std::size_t at = 0;
    for_each_kind([&](auto, const char* name) {
        if (key == name) found = at;
        ++at;
    });
    return found;
}

template <class T>
T sample(std::uint32_t seed = 1) {
    if constexpr (std::is_same_v<T, std::string>) {
        return "state " + std::to_string(seed);
    } else if constexpr (std::is_same_v<T, bool>) {
        return seed % 2 == 1;
    } else if constexpr (std::is_same_v<T, pod>) {
        return pod{seed, seed * 7ull};
    } else if constexpr (std::is_same_v<T, flags>) {
        return flags{seed, true, mode::run, static_cast<std::int16_t>(seed % 100), 0.5};
    } else {
        inventory value;
        value.owner = "ada";
        value.items = {1, 2, static_cast<std::int32_t>(seed)};
        value.counts = {{"gold", 10}, {"wood", static_cast<std::int64_t>(seed)}};
        value.open = true;
        return value;
    }
}

// A larger value of the same type, so the next commit may have to move its
// key to larger slots (raw states keep their size).
template <class T>
T bigger(T value) {
    if constexpr (std::is_same_v<T, std::string>) {
        value.append(100, 'x');
    } else if constexpr (std::is_same_v<T, inventory>) {
        for (std::int32_t i = 0; i < 40; ++i) value.items.push_back(i);
        value.counts["stone"] += 1;
    }
    return value;
}

// The same value: raw states byte for byte (a NaN in a double is still
// the same bytes), cereal states by value.
template <class T>
bool same(const T& a, const T& b) {
    if constexpr (keepsake::codec_of<T>() == keepsake::codec_kind::raw)
        return std::memcmp(static_cast<const void*>(&a), static_cast<const void*>(&b), sizeof(T)) == 0;
    else
        return a == b;
}

// Reading a bool that holds neither 0 nor 1 is undefined behaviour, so a
// decoded state must never hold one; looked at as bytes (memcpy), which
// is defined, so this also tells without UBSan.
template <class T>
bool bools_hold_0_or_1(const T& value) {
    auto byte_of = [](const bool& flag) {
        unsigned char byte = 0;
        std::memcpy(&byte, &flag, 1);
        return byte;
    };
    if constexpr (std::is_same_v<T, bool>) return byte_of(value) <= 1;
    else if constexpr (std::is_same_v<T, flags>) return byte_of(value.on) <= 1;
    else if constexpr (std::is_same_v<T, inventory>) return byte_of(value.open) <= 1;
    else return true;
}

template <class T>
keepsake::keeper_options<T> options_for() {
    keepsake::keeper_options<T> options;
    if constexpr (std::is_same_v<T, inventory>) {
        // An upgrade hook over whatever bytes the key holds: decode_as must
        // refuse them cleanly too.
        options.upgrade = [](const keepsake::stored_record& old) {
            const inventory_v0 before = keepsake::decode_as<inventory_v0>(old);
            inventory now;
            now.owner = before.owner;
            now.items = before.items;
            return now;
        };
    }
    return options;
}

// The least segment for `entries` directory entries and `data` bytes of
// keys (what segment_options::size must be at least, as check_options asks).
inline std::uint64_t least_segment_size(std::uint32_t entries, std::uint64_t data = 4096) {
    return keepsake::detail::align64(sizeof(keepsake::detail::segment_header) +
                                     std::uint64_t{entries} * sizeof(keepsake::detail::dir_entry)) +
           data;
}

// --- findings ---------------------------------------------------------------
class finding : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

[[noreturn]] inline void report(const std::string& what) {
#ifdef KEEPSAKE_FUZZ_ABORT_ON_FINDING
    std::fprintf(stderr, "keepsake fuzz finding: %s\n", what.c_str());
    std::fflush(stderr);
    std::abort();
#else
    throw finding(what);
#endif
}

inline void check(bool holds, const std::string& what) {
    if (!holds) report(what);
}

// Runs `step`. A keepsake::error is an outcome: its code is returned. Any
// other exception is a finding.
template <class Step>
std::optional<keepsake::errc> expected(const char* what, Step&& step) {
    try {
        step();
        return std::nullopt;
    } catch (const finding&) {
        throw;
    } catch (const keepsake::error& failure) {
        return failure.code();
    } catch (const std::exception& failure) {
        report(std::string(what) + " threw a " + typeid(failure).name() + " that is not a keepsake::error: " +
               failure.what());
    } catch (...) {
        report(std::string(what) + " threw something that is not a std::exception");
    }
}

// --- where the entries put files ----------------------------------------
// One private directory per process, below $KEEPSAKE_FUZZ_DIR (else
// /dev/shm), removed at exit.
inline const std::string& run_directory() {
    static const std::string* path = [] {
        const char* base = std::getenv("KEEPSAKE_FUZZ_DIR");
        std::string pattern = std::string(base && *base ? base : "/dev/shm") + "/keepsake-fuzz-XXXXXX";
        if (::mkdtemp(pattern.data()) == nullptr) {
            std::perror(("keepsake fuzz: mkdtemp " + pattern).c_str());
            std::abort();
        }
        // Never destroyed, so the handler below can still read it at exit.
        static const std::string* made = new std::string(pattern);
        std::atexit([] {
            std::error_code ignored;
            std::filesystem::remove_all(*made, ignored);
        });
        return made;
    }();
    return *path;
}

inline std::string sub_directory(const char* name) {
    const std::string path = run_directory() + "/" + name;
    std::filesystem::create_directories(path);
    return path;
}

// The same, emptied first.
inline std::string fresh_sub_directory(const char* name) {
    std::filesystem::remove_all(run_directory() + "/" + name);
    return sub_directory(name);
}

inline void write_file(const std::string& path, const std::string& bytes) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    check(fd >= 0, "cannot create " + path);
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t wrote = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (wrote <= 0) break;
        done += static_cast<std::size_t>(wrote);
    }
    ::close(fd);
    check(done == bytes.size(), "cannot write " + path);
}

// --- restore outcomes ---------------------------------------------------
// What a restore gave: an error code, no state, or a value at a generation.
template <class T>
struct outcome {
    std::optional<keepsake::errc> error;
    std::optional<T> value;
    std::uint64_t generation = 0;

    bool operator==(const outcome& other) const {
        if (error != other.error || value.has_value() != other.value.has_value()) return false;
        if (generation != other.generation) return false;
        return !value || same(*value, *other.value);
    }
};

template <class T>
outcome<T> restore_outcome(keepsake::keeper<T>& kept) {
    outcome<T> result;
    result.error = expected("keeper::restore", [&] {
        if (auto found = kept.restore()) {
            check(bools_hold_0_or_1(found->value), "restore handed on a bool that is neither 0 nor 1");
            result.value = std::move(found->value);
            result.generation = found->info.generation;
        }
    });
    return result;
}

// The promise of a commit: it returned a generation restore reads, and
// restore gives back that generation and that value.
template <class T>
void check_committed(keepsake::keeper<T>& kept, const T& value, std::uint64_t generation, std::uint64_t above,
                     const std::string& where) {
    check(generation > above && generation <= keepsake::detail::max_generation,
          where + ": commit returned generation " + std::to_string(generation) + ", after " + std::to_string(above));
    const outcome<T> now = restore_outcome(kept);
    check(!now.error && now.value && now.generation == generation && same(*now.value, value),
          where + ": restore does not give back generation " + std::to_string(generation) + " as committed");
}

// --- recovery from a store, as the file and SQLite entries use it -------
// A keeper in a segment of its own (kept open by the process, each key
// removed after use) recovers `key` from `from`. With `memory_first`, the
// key commits a state to shared memory first, so recovery compares the two.
inline keepsake::segment& memory_segment() {
    static keepsake::segment* opened = [] {
        keepsake::segment_options options;
        options.directory = sub_directory("memory");
        options.size = 64u << 10;
        options.max_size = 1u << 20;
        options.max_entries = 8;
        return new keepsake::segment("memory", options);
    }();
    return *opened;
}

template <class T>
void recover_and_check(keepsake::store& from, const std::string& key, bool memory_first) {
    keepsake::segment& memory = memory_segment();
    memory.remove_key(key);  // left by a run a finding cut short (in the tests, which go on)
    {
        keepsake::keeper<T> kept(memory, key, options_for<T>());
        std::uint64_t in_memory = 0;
        if (memory_first) in_memory = kept.commit(sample<T>(3));
        std::optional<keepsake::recovered<T>> result;
        const auto failed = expected("keepsake::recover", [&] { result.emplace(keepsake::recover(kept, from, sample<T>(), "")); });
        if (failed) {
            using keepsake::errc;
            check(*failed == errc::record_corrupt || *failed == errc::decode_failed || *failed == errc::type_mismatch ||
                      *failed == errc::version_too_new,
                  "recover failed with an unexpected error code " + std::to_string(static_cast<int>(*failed)));
        } else {
            const std::string where = "recover from " + std::string(keepsake::to_string(result->source));
            check(bools_hold_0_or_1(result->value), where + " handed on a bool that is neither 0 nor 1");
            check_committed(kept, result->value, result->generation,
                            result->source == keepsake::recovery_source::store ? result->store_generation : 0, where);
            if (result->source == keepsake::recovery_source::shared_memory)
                check(result->generation == in_memory, where + ": not the generation shared memory held");
            if (result->source == keepsake::recovery_source::initial)
                check(!memory_first && same(result->value, sample<T>()), where + ": not the initial state");
        }
    }
    memory.remove_key(key);
}

} // namespace keepsake_fuzz
