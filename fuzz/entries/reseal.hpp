// fuzz/entries/reseal.hpp: makes the checksums of fuzzed bytes hold again.
//
// A mutated segment or record fails its checksum at once, so a fuzzer that
// fed only what it mutated would never get past the first check. Each
// entry therefore also runs the input "resealed": every checksum the
// library checks (segment header, directory blocks, entries, region
// descriptors, slots; a record file's header and record) computed again
// over the mutated bytes, which then reach the code behind the checks:
// directory geometry, free space, slot words, the decoders.
//
// The segment checksums are private to segment-inl.hpp, so they are
// computed again here; tests/fuzz_regression_test.cpp checks that
// resealing a segment the library wrote changes nothing, so a change of
// them there cannot go unnoticed (the fuzzers would silently stop getting
// past them).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <keepsake/codec.hpp>
#include <keepsake/detail/checksum.hpp>
#include <keepsake/detail/layout.hpp>
#include <keepsake/detail/slots.hpp>
#include <keepsake/segment.hpp>
#include <keepsake/store.hpp>
#include <keepsake/stores/file_store.hpp>

namespace keepsake_fuzz {

template <class T>
bool read_at(const std::string& bytes, std::uint64_t offset, T& out) {
    if (offset > bytes.size() || sizeof(T) > bytes.size() - offset) return false;
    std::memcpy(static_cast<void*>(&out), bytes.data() + offset, sizeof(T));
    return true;
}

template <class T>
void write_at(std::string& bytes, std::uint64_t offset, const T& in) {
    std::memcpy(bytes.data() + offset, static_cast<const void*>(&in), sizeof(T));
}

namespace sealing {

using namespace keepsake::detail;

// The slots of an entry's active region, each with the tag it holds (a
// foreign tag stays foreign).
inline void reseal_slots(std::string& bytes, const dir_entry& entry) {
    const region_desc& region = entry.regions[entry.active & 1u];
    if (region.capacity > bytes.size() || region.offset > bytes.size()) return;
    const std::uint64_t stride = slot_stride(region.capacity);
    const std::uint64_t slots =
        entry.kind == static_cast<std::uint32_t>(entry_kind::table) ? 2ull * region.count : region.count;
    for (std::uint64_t s = 0; s < slots; ++s) {
        const std::uint64_t at = region.offset + s * stride;
        slot_header header{};
        if (!read_at(bytes, at, header)) break;
        const std::uint64_t data = at + sizeof(slot_header);
        if (header.generation == 0 || header.size > region.capacity || header.size > bytes.size() - data) continue;
        header.checksum = slot_checksum(header.generation, header.size, header.fingerprint, header.schema_version,
                                        header.codec, bytes.data() + data, header.commit_ns, header.tag);
        write_at(bytes, at, header);
    }
}

inline void reseal_entries(std::string& bytes, const directory_block& block) {
    if (block.offset > bytes.size()) return;
    for (std::uint64_t i = 0; i < block.count; ++i) {
        const std::uint64_t at = block.offset + i * sizeof(dir_entry);
        dir_entry entry{};
        if (!read_at(bytes, at, entry)) break;
        if (entry.state == entry_free) continue;
        entry.checksum = entry_checksum_of(entry);
        // A descriptor never used (all zeros: the entry never moved) stays so.
        static const region_desc unused{};
        for (region_desc& region : entry.regions)
            if (std::memcmp(&region, &unused, sizeof(region)) != 0) region.checksum = region_checksum_of(region, entry.checksum);
        write_at(bytes, at, entry);
        reseal_slots(bytes, entry);
    }
}

} // namespace sealing

// A segment file with every checksum computed again over its bytes.
inline std::string reseal_segment(std::string bytes) {
    using namespace keepsake::detail;
    segment_header header{};
    if (!read_at(bytes, 0, header)) return bytes;
    header.header_checksum = header_checksum_of(header);
    const std::uint32_t blocks = std::min(header.block_count, max_directory_blocks);
    for (std::uint32_t b = 0; b < blocks; ++b) {
        header.blocks[b].checksum = keepsake::detail::block_checksum_of(header.blocks[b]);
        sealing::reseal_entries(bytes, header.blocks[b]);
    }
    write_at(bytes, 0, header);
    return bytes;
}

// What a segment entry runs on: the bytes as given, and resealed when that
// changes them.
inline std::vector<std::string> segment_variants(const std::uint8_t* data, std::size_t size) {
    std::vector<std::string> variants{std::string(reinterpret_cast<const char*>(data), size)};
    std::string sealed = reseal_segment(variants.front());
    if (sealed != variants.front()) variants.push_back(std::move(sealed));
    return variants;
}

// The words a record carries about its type.
struct identity {
    std::uint64_t fingerprint = 0;
    std::uint32_t schema_version = 0;
    std::uint32_t codec = 0;
};

template <class T>
identity identity_of() {
    return identity{keepsake::type_fingerprint<T>(), keepsake::state_traits<T>::schema_version,
                    static_cast<std::uint32_t>(keepsake::codec_of<T>())};
}

// A file store record file with its data length, record checksum and
// header checksum made to hold (the key and bytes as the file has them);
// `as` also puts another type's identity in its words first.
inline std::string reseal_record_file(std::string bytes, const std::optional<identity>& as = std::nullopt) {
    using keepsake::detail::file_record_header;
    file_record_header header{};
    if (!read_at(bytes, 0, header)) return bytes;
    if (as) {
        header.fingerprint = as->fingerprint;
        header.schema_version = as->schema_version;
        header.codec = as->codec;
    }
    const std::uint64_t rest = bytes.size() - sizeof(header);
    if (header.key_length <= rest) {
        header.data_length = rest - header.key_length;
        const std::string key = bytes.substr(sizeof(header), header.key_length);
        const auto* data = reinterpret_cast<const std::byte*>(bytes.data() + sizeof(header) + header.key_length);
        header.checksum = keepsake::detail::record_checksum(key, header.generation, header.schema_version, header.codec,
                                                            header.fingerprint, data,
                                                            static_cast<std::size_t>(header.data_length));
    }
    header.header_checksum = keepsake::detail::file_header_checksum(header);
    write_at(bytes, 0, header);
    return bytes;
}

} // namespace keepsake_fuzz
