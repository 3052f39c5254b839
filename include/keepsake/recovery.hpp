// keepsake/recovery.hpp: opening a key's state after a crash or a reboot,
// and deleting a key everywhere.
//
// Recovery takes the newest valid of (shared memory, store), else the
// initial state, and says which. Shared memory wins a tie: it is the copy
// the store's was made from. When the store wins (after a reboot there is no
// segment, so it always does), its state is committed into the keeper one
// generation above the store's, so the keeper carries on from there and the
// exporter writes it back: decoded and encoded again (or upgraded), its bytes
// may differ from the record's, and at the store's own generation the
// exporter would report it as a stale_generation.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "keepsake/error.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/log.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

enum class recovery_source { shared_memory, store, initial };

inline const char* to_string(recovery_source source) noexcept {
    switch (source) {
    case recovery_source::shared_memory: return "shared_memory";
    case recovery_source::store: return "store";
    case recovery_source::initial: return "initial";
    }
    return "unknown";
}

template <class T>
struct recovered {
    T value;
    recovery_source source = recovery_source::initial;
    std::uint64_t generation = 0;        // the keeper's committed generation now
    std::uint64_t store_generation = 0;  // the store's record, 0 if none (or damaged)
    std::vector<std::string> problems;   // damaged copies passed over, in words
};

namespace detail {

template <class T>
[[noreturn]] void throw_too_new(const record& r, const keeper_options<T>& options, const store& from) {
    throw error(errc::version_too_new,
                from.describe() + ": record '" + r.key + "' has schema version " + std::to_string(r.schema_version) +
                    ", newer than the " + std::to_string(options.schema_version) +
                    " this program knows; it was left untouched: run the program that wrote it, or remove it");
}

// The store's record, or nothing; a damaged one is reported in `problems`,
// logged, and removed, so the state recovery picks instead can be exported
// in its place (a damaged record may claim any generation).
inline std::optional<record> fetch_valid(store& from, const std::string& key, std::vector<std::string>& problems) {
    try {
        return from.get(key);
    } catch (const error& failure) {
        if (failure.code() != errc::record_corrupt) throw;
        problems.emplace_back(failure.what());
        log(spdlog::level::err, [&] { return std::string("recovery: ") + failure.what() + "; removing it"; });
        from.remove(key);
        return std::nullopt;
    }
}

// Turns a store record into a T as keeper::restore does with a slot: the
// same type and schema decode directly, anything else needs the upgrade hook.
template <class T>
void decode_record(const record& r, const keeper_options<T>& options, T& out) {
    const bool same_type = r.fingerprint == type_fingerprint<T>() && r.schema_version == options.schema_version &&
                           r.codec == static_cast<std::uint32_t>(codec_of<T>());
    if (same_type) {
        T decoded = out;
        decode_into(r.bytes.data(), r.bytes.size(), decoded);
        out = std::move(decoded);
        return;
    }
    if (!options.upgrade)
        throw error(errc::type_mismatch, "store record '" + r.key + "' was written by another type or schema version (" +
                                             std::to_string(r.schema_version) + "; this program has " +
                                             std::to_string(options.schema_version) +
                                             "); give keeper_options::upgrade to convert it, or remove the record");
    stored_record old;
    old.generation = r.generation;
    old.fingerprint = r.fingerprint;
    old.schema_version = r.schema_version;
    old.codec = static_cast<codec_kind>(r.codec);
    old.data = r.bytes.data();
    old.size = r.bytes.size();
    out = options.upgrade(old);
}

} // namespace detail

// Opens `kept`'s state: the newest valid of its shared-memory slots and the
// store's record under `prefix + kept.key()`, else `initial` (committed, so
// it is exported too). Throws errc::version_too_new, leaving the record
// untouched, if the store's record has a schema newer than the keeper's;
// errc::store_failed if the store cannot be read (then which copy is newest
// cannot be known).
template <class T>
recovered<T> recover(keeper<T>& kept, store& from, T initial, const std::string& prefix = {}) {
    recovered<T> result{std::move(initial), recovery_source::initial, 0, 0, {}};
    T in_memory = result.value;
    const std::optional<restore_info> memory = kept.restore_into(in_memory);
    const std::optional<record> stored = detail::fetch_valid(from, prefix + kept.key(), result.problems);
    if (stored) {
        if (stored->schema_version > kept.options().schema_version) detail::throw_too_new(*stored, kept.options(), from);
        result.store_generation = stored->generation;
    }
    if (stored && (!memory || stored->generation > memory->generation)) {
        detail::decode_record(*stored, kept.options(), result.value);
        result.source = recovery_source::store;
        const std::uint64_t above = stored->generation == ~std::uint64_t{0} ? stored->generation
                                                                           : stored->generation + 1;
        result.generation = kept.commit_at_least(result.value, above);
    } else if (memory) {
        result.value = std::move(in_memory);
        result.source = recovery_source::shared_memory;
        result.generation = memory->generation;
    } else {
        result.generation = kept.commit(result.value);
    }
    detail::log(spdlog::level::info, [&] {
        return "recovered key '" + kept.key() + "' from " + to_string(result.source) + " at generation " +
               std::to_string(result.generation);
    });
    return result;
}

// Terminate-and-delete without an exporter running: removes `key` from the
// segment (throws errc::key_in_use while a keeper holds it) and `prefix +
// key` from the store. With an exporter running, use exporter::forget.
inline bool forget(segment& where, store& from, const std::string& key, const std::string& prefix = {}) {
    const bool in_memory = where.remove_key(key);
    const bool in_store = from.remove(prefix + key);
    return in_memory || in_store;
}

} // namespace keepsake
