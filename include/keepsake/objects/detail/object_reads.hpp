// keepsake/objects/detail/object_reads.hpp: a directory's reads that wake
// nothing: an object's committed value from the segment (copied as the
// exporter copies it) or the store, where it is, and which keys exist.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "keepsake/codec.hpp"
#include "keepsake/detail/snapshot.hpp"
#include "keepsake/error.hpp"
#include "keepsake/objects/directory_spec.hpp"
#include "keepsake/objects/object_state.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"

namespace keepsake::detail {

template <class State>
class object_reads {
public:
    object_reads(const segment& where, const std::string& prefix, store* durable, const std::string& store_prefix)
        : segment_(where), prefix_(prefix), durable_(durable), store_prefix_(store_prefix) {}

    // The newest committed value of `key`: the segment's, or the store's if
    // it is newer (or the segment has none).
    std::optional<object_state<State>> read(const std::string& key) const {
        std::optional<record> found = newest_record(key);
        if (!found) return std::nullopt;
        object_state<State> decoded;
        decode(*found, decoded);
        return decoded;
    }

    std::optional<record> newest_record(const std::string& key) const {
        std::optional<record> in_memory = from_segment(key);
        std::optional<record> in_store = from_store(key);
        if (in_store && (!in_memory || in_store->generation > in_memory->generation)) return in_store;
        return in_memory;
    }

    std::optional<record> from_segment(const std::string& key) const {
        const auto view = segment_.shared_impl()->entry_view_of(prefix_ + key);
        if (!view || view->kind != entry_kind::state) return std::nullopt;
        record copied;
        switch (snapshot_newest(view->area, 0, copied)) {
        case snapshot_status::copied: break;
        case snapshot_status::busy:
            throw error(errc::timeout, "object '" + key + "' was committed again during every copy; try again");
        default: return std::nullopt;  // never committed, or every slot failed its checksum
        }
        copied.key = prefix_ + key;
        return copied;
    }

    std::optional<record> from_store(const std::string& key) const {
        if (durable_ == nullptr) return std::nullopt;
        return durable_->get(store_prefix_ + prefix_ + key);
    }

    object_status where_is(const std::string& key) const {
        if (from_segment(key)) return object_status::hibernated;
        if (durable_ != nullptr && durable_->get(store_prefix_ + prefix_ + key)) return object_status::shut_down;
        return object_status::absent;
    }

    // The directory's keys in the segment and the store, sorted, each once.
    std::vector<std::string> keys() const {
        std::vector<std::string> found;
        for (const auto& view : segment_.shared_impl()->entry_views())
            if (view.kind == entry_kind::state && view.key.compare(0, prefix_.size(), prefix_) == 0)
                found.push_back(view.key.substr(prefix_.size()));
        if (durable_ != nullptr)
            for (const std::string& each : durable_->list(store_prefix_ + prefix_))
                found.push_back(each.substr(store_prefix_.size() + prefix_.size()));
        std::sort(found.begin(), found.end());
        found.erase(std::unique(found.begin(), found.end()), found.end());
        return found;
    }

    // Bytes of the object's type become its value; others are an error
    // that says what they are (never "no state").
    static void decode(const record& found, object_state<State>& out) {
        using held = object_state<State>;
        if (found.fingerprint != type_fingerprint<held>() ||
            found.schema_version != state_traits<held>::schema_version ||
            found.codec != static_cast<std::uint32_t>(codec_of<held>()))
            throw error(errc::type_mismatch, "object record '" + found.key +
                                                 "' was written by another type or schema version; remove it or "
                                                 "give the directory the type that wrote it");
        try {
            decode_into(found.bytes.data(), found.bytes.size(), out);
        } catch (const error& failure) {
            throw error(errc::decode_failed, "object record '" + found.key + "' (generation " +
                                                 std::to_string(found.generation) +
                                                 ") passed its checksum but does not decode: " + failure.what());
        }
    }

private:
    const segment& segment_;
    const std::string& prefix_;
    store* durable_;
    const std::string& store_prefix_;
};

} // namespace keepsake::detail
