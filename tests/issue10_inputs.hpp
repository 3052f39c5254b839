// tests/issue10_inputs.hpp: the three file store records issue 10 lists as
// inputs that failed (hex of the record files, as file_store reads them),
// and recovery from a file store holding one of them. Used by the fuzz
// regression tests (error codes, under every sanitizer) and the allocation
// tests (memory, with a counting operator new).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <keepsake/keepsake.hpp>
#include <keepsake/stores/file_store.hpp>

#include "entries/common.hpp"
#include "entries/reseal.hpp"
#include "support.hpp"

namespace issue10 {

// Key "str" (keeper<std::string>): its string's length prefix asks for 4 GiB.
inline constexpr const char* str_asks_4gib =
    "4b4b45505245430001000000030000006c6c6f050000000069a4c41ad995f85201000000020000000800000000000000cb5da64a"
    "48528ab3fb0e2118322270e47374726c6f050001000000";
// Key "bool" (raw codec): the bool's byte is 0x6c.
inline constexpr const char* bool_holds_0x6c =
    "4b4b45505245430001000000040000006f6c014469e050fbd7589e14f6ad1baa01000000010000000100000000000000d95809ec"
    "9e1171176b48bc1f9b286020626f6f6c6c";
// Key "pod" (16 raw bytes): generation 2^64-1.
inline constexpr const char* pod_at_top_generation =
    "4b4b4550524543000100000003000000ffffffffffffffff4785306d43dafdcc0100000001000000100000000000000021650b1b"
    "cfb77106a0fe736a25b46011706f6401010000000000000002000061626364";

inline std::string unhex(const char* hex) {
    std::string bytes;
    for (const char* at = hex; at[0] != '\0' && at[1] != '\0'; at += 2)
        bytes += static_cast<char>(std::stoi(std::string(at, 2), nullptr, 16));
    return bytes;
}

// The same record as this build would have written it: the issue's files
// carry the fingerprints of the build that found them, and a fingerprint
// that is not T's is refused as another type before any decoding. This one
// carries T's fingerprint, optionally another generation, and checksums
// that hold, so the decoder meets the forged bytes.
template <class T>
std::string for_this_build(const std::string& file, std::optional<std::uint64_t> generation = std::nullopt) {
    std::string bytes = file;
    keepsake::detail::file_record_header header{};
    keepsake_fuzz::read_at(bytes, 0, header);
    if (generation) header.generation = *generation;
    keepsake_fuzz::write_at(bytes, 0, header);
    return keepsake_fuzz::reseal_record_file(bytes, keepsake_fuzz::identity_of<T>());
}

struct recovery {
    std::optional<keepsake::errc> error;  // recover() threw this
    std::string message;
    keepsake::recovery_source source = keepsake::recovery_source::initial;
    std::uint64_t generation = 0;  // the keeper's, after recovery
    std::uint64_t restored = 0;    // what restore() then gives
    std::vector<std::string> problems;
};

// Recovers keeper<T> `key` from a file store whose record file of `key`
// holds `file`, shared memory empty; `around` runs the recovery (a test
// measures it there).
template <class T, class Around>
recovery recover_from_file(const std::string& file, const std::string& key, Around&& around) {
    test_support::temp_dir files;
    test_support::shm_dir memory;
    keepsake::file_store store(files.path(), {/*sync*/ false});
    keepsake_fuzz::write_file(store.path_of(key), file);
    keepsake::segment segment("issue10", memory.options());
    keepsake::keeper<T> kept(segment, key);
    recovery result;
    around([&] {
        try {
            const keepsake::recovered<T> got = keepsake::recover(kept, store, T{});
            result.source = got.source;
            result.generation = got.generation;
            result.problems = got.problems;
        } catch (const keepsake::error& failure) {
            result.error = failure.code();
            result.message = failure.what();
        }
    });
    if (const auto now = kept.restore()) result.restored = now->info.generation;
    return result;
}

template <class T>
recovery recover_from_file(const std::string& file, const std::string& key) {
    return recover_from_file<T>(file, key, [](auto&& run) { run(); });
}

} // namespace issue10
