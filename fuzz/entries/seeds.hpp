// fuzz/entries/seeds.hpp: seed inputs made by the library itself, for each
// target: segments with every kept key committed (one moved to larger
// slots, one removed and added again, one left by a "crash"), the file
// store's record file of each key, and an SQLite row of each key. Written
// out by fuzz/make_seeds.cpp as the fuzzers' starting corpora, and fed to
// the entries by the regression tests, so a seed that stops working as a
// real file is noticed.
#pragma once

#include <fstream>
#include <iterator>

#include "entries/common.hpp"
#include "entries/reseal.hpp"
#include "entries/sqlite_row.hpp"

#include <keepsake/stores/file_store.hpp>

namespace keepsake_fuzz::seeds {

struct seed {
    std::string name;
    std::string bytes;
};

inline std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Small segments: the least size for their directory plus `data` bytes.
inline keepsake::segment_options small(const std::string& directory, std::uint32_t entries,
                                       std::uint64_t data = 4096) {
    keepsake::segment_options options;
    options.directory = directory;
    options.max_entries = entries;
    options.size = least_segment_size(entries, data);
    options.max_size = options.size;  // a seed that needs more is a mistake here, not a larger seed
    return options;
}

// Every kept key, committed twice, the second time larger (a string and
// the inventory move to larger slots).
inline void commit_every_kind(keepsake::segment& where, std::uint32_t slots) {
    for_each_kind([&](auto kind, const char* key) {
        using T = typename decltype(kind)::type;
        keepsake::keeper_options<T> options = options_for<T>();
        options.slots = slots;
        keepsake::keeper<T> kept(where, key, options);
        kept.commit(sample<T>(1));
        kept.commit(bigger(sample<T>(2)));
    });
}

inline std::vector<seed> segment_seeds() {
    const std::string directory = fresh_sub_directory("seeds-segment");
    auto file = [&](const std::string& name) { return read_file(directory + "/keepsake." + name); };
    std::vector<seed> made;
    {
        keepsake::segment empty("empty", small(directory, 1));
    }
    made.push_back({"empty", file("empty")});
    {
        // Two entries in the first directory block: the other keys need a second.
        keepsake::segment every("every", small(directory, 2));
        commit_every_kind(every, 2);
    }
    made.push_back({"every-kind", file("every")});
    // The same, as a crash leaves it: the owner never marked it closed.
    std::string crashed = file("every");
    keepsake::detail::segment_header header{};
    read_at(crashed, 0, header);
    header.clean_state = keepsake::detail::state_dirty;
    write_at(crashed, 0, header);
    made.push_back({"every-kind-crashed", crashed});
    {
        // Three slots each; a key removed and added again (its entry and
        // region reused).
        keepsake::segment churn("churn", small(directory, 8, 8192));
        commit_every_kind(churn, 3);
        churn.remove_key("str");
        keepsake::keeper<std::string> again(churn, "str");
        again.commit("again");
    }
    made.push_back({"three-slots-churn", file("churn")});
    return made;
}

// A record of `key` as the exporter would make it from a keeper<T>.
template <class T>
keepsake::record sample_record(const std::string& key, std::uint64_t generation, std::uint32_t seed) {
    keepsake::record r;
    r.key = key;
    r.generation = generation;
    const identity as = identity_of<T>();
    r.fingerprint = as.fingerprint;
    r.schema_version = as.schema_version;
    r.codec = as.codec;
    const T value = bigger(sample<T>(seed));
    r.bytes.resize(keepsake::encoded_size(value));
    keepsake::encode(value, r.bytes.data(), r.bytes.size());
    return r;
}

inline std::vector<seed> record_file_seeds() {
    keepsake::file_store store(fresh_sub_directory("seeds-files"), {/*sync*/ false});
    std::vector<seed> made;
    for_each_kind([&](auto kind, const char* key) {
        store.put_batch({sample_record<typename decltype(kind)::type>(key, 5, 4)});
        made.push_back({std::string(key), read_file(store.path_of(key))});
    });
    return made;
}

inline std::vector<seed> sqlite_row_seeds() {
    std::vector<seed> made;
    std::uint8_t kind = 0;
    for_each_kind([&](auto type, const char* key) {
        const keepsake::record sampled = sample_record<typename decltype(type)::type>(key, 7, 5);
        sqlite_row_fuzz::row r;
        r.generation = sampled.generation;
        r.fingerprint = sampled.fingerprint;
        r.schema_version = sampled.schema_version;
        r.codec = sampled.codec;
        r.data.assign(reinterpret_cast<const char*>(sampled.bytes.data()), sampled.bytes.size());
        r.checksum = keepsake::detail::record_checksum(sampled);
        r.control = kind;
        made.push_back({std::string(key), sqlite_row_fuzz::format(r)});
        r.control = static_cast<std::uint8_t>(kind | sqlite_row_fuzz::memory_first);
        made.push_back({std::string(key) + "-beside-memory", sqlite_row_fuzz::format(r)});
        ++kind;
    });
    return made;
}

// The seeds of a target, by the target's name.
inline std::vector<seed> for_target(const std::string& target) {
    if (target == "segment" || target == "inspect") return segment_seeds();
    if (target == "file_record") return record_file_seeds();
    if (target == "sqlite_row") return sqlite_row_seeds();
    return {};
}

inline const char* const targets[] = {"segment", "file_record", "sqlite_row", "inspect"};

} // namespace keepsake_fuzz::seeds
