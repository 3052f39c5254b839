// fuzz/entries/segment.hpp: the fuzzer's bytes are a segment file, opened
// the three ways there are:
//   - read-only view (keepsake-inspect's way): the entries, each key's
//     newest state copied out, and an exporter's pass, which must export
//     just that;
//   - owner: keepers of every kind restore, commit (twice, the second time
//     a larger state, which may move the key and grow the segment), and
//     each commit must come back from restore while every other key stays
//     as it was; then the segment is opened again and every commit must
//     still be there;
//   - maintenance (keepsake-inspect delete's way): damaged entries dropped,
//     every listed key removed.
// Each way runs on the bytes as given and on the bytes resealed
// (reseal.hpp).
#pragma once

#include "entries/common.hpp"
#include "entries/reseal.hpp"

#include <chrono>
#include <set>

#include <keepsake/detail/snapshot.hpp>
#include <keepsake/exporter.hpp>
#include <keepsake/stores/memory_store.hpp>

namespace keepsake_fuzz {

namespace segment_fuzz {

inline constexpr const char* name = "fuzz";

inline keepsake::segment_options owner_options(const std::string& directory) {
    keepsake::segment_options options;
    options.directory = directory;
    options.max_entries = 1;
    options.size = least_segment_size(1);  // the least there is
    options.max_size = 1u << 20;
    return options;
}

inline void as_view(const std::string& directory) {
    std::optional<keepsake::segment> view;
    if (expected("open read-only", [&] {
            view.emplace(keepsake::segment::open_existing(name, keepsake::segment_access::read_only, directory));
        }))
        return;
    std::vector<keepsake::entry_info> listed;
    expected("read-only view", [&] {
        listed = view->entries();
        view->status();
        view->free_bytes();
        view->damaged_entries();
    });
    const auto views = view->shared_impl()->entry_views();
    check(views.size() == listed.size(), "entries() and entry_views() disagree");
    // A read-only view does not index keys, so a key twice in the directory
    // (damage, or forgery) is listed twice there; not checked below, nor
    // are side tables, which are not exported.
    std::map<std::string, std::optional<keepsake::record>> newest;
    std::set<std::string> unchecked;
    for (const auto& each : views) {
        if (each.kind != keepsake::detail::entry_kind::state) unchecked.insert(each.key);
        keepsake::record copied;
        const auto status = keepsake::detail::snapshot_newest(each.area, 0, copied);
        if (newest.count(each.key) != 0) unchecked.insert(each.key);
        std::optional<keepsake::record>& found = newest[each.key];
        if (status != keepsake::detail::snapshot_status::copied) continue;
        check(copied.generation != 0 && copied.generation <= keepsake::detail::max_generation &&
                  copied.bytes.size() <= each.area.capacity,
              "a snapshot of key '" + each.key + "' is outside its slot's bounds");
        found = std::move(copied);
    }
    // The exporter (keepsake-inspect export's way) copies the same.
    keepsake::memory_store out;
    keepsake::exporter_options options;
    options.interval = std::chrono::hours(1);
    bool stopped = false;
    expected("exporter", [&] {
        keepsake::exporter copier(*view, out, options);
        stopped = copier.stop(std::chrono::seconds(5));
    });
    for (const keepsake::entry_info& entry : listed) {
        if (unchecked.count(entry.key) != 0) continue;
        const std::optional<keepsake::record>& copied = newest[entry.key];
        check(entry.generation == (copied ? copied->generation : 0),
              "entries() and a copy of key '" + entry.key + "' disagree on its newest valid generation");
    }
    for (const auto& [key, copied] : newest) {
        if (unchecked.count(key) != 0) continue;
        const std::optional<keepsake::record> stored = out.get(key);
        if (!copied) {
            check(!stored, "the exporter exported key '" + key + "', which holds no valid state");
            continue;
        }
        check(stored && stored->generation == copied->generation && stored->bytes == copied->bytes &&
                  stored->fingerprint == copied->fingerprint,
              "the exporter did not export key '" + key + "' as its newest slot holds it");
    }
    check(stopped || !unchecked.empty(), "the exporter's stop() failed with nothing in its way");
}

// One kept key in the owner's run: its keeper, and what restore gave last.
template <class T>
struct held {
    const char* key = key_of<T>();
    std::optional<keepsake::keeper<T>> kept;
    outcome<T> last;
};

using all_held = std::tuple<held<std::string>, held<bool>, held<pod>, held<flags>, held<inventory>>;

template <class F>
void for_each_held(all_held& keys, F&& each) {
    std::apply([&](auto&... key) { (each(key), ...); }, keys);
}

template <class T>
void open_keeper(keepsake::segment& owner, held<T>& one) {
    if (expected("keeper attach", [&] { one.kept.emplace(owner, one.key, options_for<T>()); })) return;
    one.last = restore_outcome(*one.kept);
}

// Every key but `except` restores as it did.
template <class T>
void check_others(all_held& keys, const held<T>& except, const std::string& after) {
    for_each_held(keys, [&](auto& other) {
        if (static_cast<const void*>(&other) == static_cast<const void*>(&except) || !other.kept) return;
        check(restore_outcome(*other.kept) == other.last,
              "key '" + std::string(other.key) + "' changed under " + after);
    });
}

template <class T>
void commit_twice(all_held& keys, held<T>& one) {
    if (!one.kept) return;
    T value = one.last.value ? *one.last.value : sample<T>();
    for (int round = 0; round < 2; ++round, value = bigger(value)) {
        const std::string where = "commit " + std::to_string(round) + " of key '" + one.key + "'";
        const std::uint64_t above = one.last.value ? one.last.generation : 0;
        std::uint64_t generation = 0;
        const auto failed = expected("keeper::commit", [&] { generation = one.kept->commit(value); });
        if (failed) {
            // Full (max_size), or a damaged slot at the last generation.
            check(*failed == keepsake::errc::out_of_space || *failed == keepsake::errc::segment_corrupt,
                  where + " failed with error code " + std::to_string(static_cast<int>(*failed)));
            return;
        }
        check_committed(*one.kept, value, generation, above, where);
        one.last = restore_outcome(*one.kept);
        check_others(keys, one, where);
    }
}

inline void as_owner(const std::string& directory) {
    all_held keys;
    {
        std::optional<keepsake::segment> owner;
        if (expected("open as owner", [&] { owner.emplace(name, owner_options(directory)); })) return;
        expected("owner's view", [&] {
            owner->entries();
            owner->status();
            owner->free_bytes();
        });
        if (owner->damaged_entries() != 0) owner->drop_damaged_entries();
        for_each_held(keys, [&](auto& one) { open_keeper(*owner, one); });
        for_each_held(keys, [&](auto& one) { commit_twice(keys, one); });
        for_each_held(keys, [&](auto& one) { one.kept.reset(); });
    }
    // Committed means kept: a new owner finds every key as it was left.
    keepsake::segment again = [&] {
        std::optional<keepsake::segment> reopened;
        const auto failed = expected("reopen as owner", [&] { reopened.emplace(name, owner_options(directory)); });
        check(!failed, "the segment no longer opens after the owner's commits (error code " +
                           std::to_string(failed ? static_cast<int>(*failed) : 0) + ")");
        return *reopened;
    }();
    for_each_held(keys, [&](auto& one) {
        if (!one.last.value) return;
        using T = std::decay_t<decltype(*one.last.value)>;
        std::optional<keepsake::keeper<T>> kept;
        const auto failed = expected("keeper attach after reopening", [&] { kept.emplace(again, one.key, options_for<T>()); });
        check(!failed, "key '" + std::string(one.key) + "' cannot be kept after reopening");
        check(restore_outcome(*kept) == one.last, "key '" + std::string(one.key) + "' lost its commit on reopening");
    });
}

inline void as_maintenance(const std::string& directory) {
    std::optional<keepsake::segment> held_open;
    if (expected("open for maintenance", [&] {
            held_open.emplace(
                keepsake::segment::open_existing(name, keepsake::segment_access::maintenance, directory));
        }))
        return;
    keepsake::segment& segment = *held_open;
    segment.entries();
    if (segment.damaged_entries() != 0) segment.drop_damaged_entries();
    std::vector<std::string> kept;
    for (const keepsake::entry_info& entry : segment.entries()) {
        bool removed = false;
        const auto failed = expected("segment::remove_key", [&] { removed = segment.remove_key(entry.key); });
        if (failed) {
            // A key the directory holds but the naming rules refuse.
            check(*failed == keepsake::errc::invalid_name, "remove_key('" + entry.key + "') failed with error code " +
                                                                std::to_string(static_cast<int>(*failed)));
            kept.push_back(entry.key);
        } else {
            check(removed, "remove_key('" + entry.key + "') found no key that entries() lists");
        }
    }
    check(segment.entries().size() == kept.size(), "keys are left after removing every key");
}

} // namespace segment_fuzz

inline int segment_entry(const std::uint8_t* data, std::size_t size) {
    static const std::string directory = sub_directory("segment");
    const std::string path = directory + "/keepsake." + segment_fuzz::name;
    for (const std::string& bytes : segment_variants(data, size)) {
        write_file(path, bytes);
        segment_fuzz::as_view(directory);
        write_file(path, bytes);
        segment_fuzz::as_owner(directory);
        write_file(path, bytes);
        segment_fuzz::as_maintenance(directory);
    }
    return 0;
}

} // namespace keepsake_fuzz
