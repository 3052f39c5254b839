// fuzz/entries/file_record.hpp: the fuzzer's bytes are the record file of
// a key in a file store (`<key>.rec`, as file_store reads it). The key, and
// so the kept type, is the one the file names when it is one of the kept
// keys (common.hpp), else one picked by the input's length (the file then
// holds "another key"). The store's get() must hand on exactly what the
// file holds, or refuse it; keepsake::recover then decodes it into a keeper
// of that type, with shared memory empty and holding a state of its own.
// Runs on the bytes as given, resealed, and resealed with the kept type's
// identity (so the decoder sees them).
#pragma once

#include "entries/common.hpp"
#include "entries/reseal.hpp"

#include <keepsake/stores/file_store.hpp>

namespace keepsake_fuzz {

namespace file_record_fuzz {

inline keepsake::file_store& store() {
    static keepsake::file_store* opened = new keepsake::file_store(sub_directory("files"), {/*sync*/ false});
    return *opened;
}

// What get() handed on is what the file holds.
inline void check_against_file(const keepsake::record& got, const std::string& bytes, const std::string& key) {
    keepsake::detail::file_record_header header{};
    check(read_at(bytes, 0, header), "get() took a file shorter than its header");
    check(got.key == key && got.generation == header.generation && got.fingerprint == header.fingerprint &&
              got.schema_version == header.schema_version && got.codec == header.codec &&
              keepsake::detail::record_generation_in_range(got.generation),
          "get() handed on words the file does not hold");
    const std::size_t data = sizeof(header) + key.size();
    check(data <= bytes.size() && got.bytes.size() == bytes.size() - data &&
              (got.bytes.empty() || std::memcmp(got.bytes.data(), bytes.data() + data, got.bytes.size()) == 0),
          "get() handed on bytes the file does not hold");
    check(keepsake::detail::record_checksum(got) == header.checksum, "get() handed on a record that fails its checksum");
}

template <class T>
void run(const std::string& bytes, const std::string& key, bool memory_first) {
    const std::string path = store().path_of(key);
    write_file(path, bytes);
    std::optional<keepsake::record> got;
    const auto failed = expected("file_store::get", [&] { got = store().get(key); });
    if (failed) check(*failed == keepsake::errc::record_corrupt, "get() failed with error code " +
                                                                     std::to_string(static_cast<int>(*failed)));
    else check(got.has_value(), "get() found no record where the file is");
    if (got) check_against_file(*got, bytes, key);
    write_file(path, bytes);  // get() leaves it, recover() may remove a damaged one
    recover_and_check<T>(store(), key, memory_first);
    store().remove(key);
}

// The key named in the file, when it is one of the kept keys.
inline std::optional<std::size_t> named_kind(const std::string& bytes) {
    keepsake::detail::file_record_header header{};
    if (!read_at(bytes, 0, header) || header.key_length > bytes.size() - sizeof(header)) return std::nullopt;
    return kind_of_key(bytes.substr(sizeof(header), header.key_length));
}

} // namespace file_record_fuzz

inline int file_record_entry(const std::uint8_t* data, std::size_t size) {
    const std::string given(reinterpret_cast<const char*>(data), size);
    const std::size_t kind = file_record_fuzz::named_kind(given).value_or(size % kind_count);
    with_kind(kind, [&](auto type, const char* key) {
        using T = typename decltype(type)::type;
        const std::string sealed = reseal_record_file(given);
        const std::string stamped = reseal_record_file(given, identity_of<T>());
        for (const std::string* bytes : {&given, &sealed, &stamped}) {
            if ((bytes != &given && *bytes == given) || (bytes == &stamped && stamped == sealed)) continue;
            file_record_fuzz::run<T>(*bytes, key, false);
            file_record_fuzz::run<T>(*bytes, key, true);
        }
    });
    return 0;
}

} // namespace keepsake_fuzz
