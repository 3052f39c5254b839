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

#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/clock.hpp"
#include "keepsake/detail/group_record.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
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
    std::uint64_t store_generation = 0;  // the store's record, 0 if none (or damaged, or unreadable)
    std::vector<std::string> problems;   // damaged copies passed over, an unreadable store, in words
    bool store_unreadable = false;       // the store could not be read: shared memory was taken without it
};

namespace detail {

template <class T>
[[noreturn]] void throw_too_new(const record& r, const keeper_options<T>& options, const store& from) {
    throw error(errc::version_too_new,
                from.describe() + ": record '" + r.key + "' has schema version " + std::to_string(r.schema_version) +
                    ", newer than the " + std::to_string(options.schema_version) +
                    " this program knows; it was left untouched: run the program that wrote it, or remove it");
}

// Removing a damaged record is a courtesy (the exporter writes the chosen
// state over it anyway): a store that refuses it changes nothing here.
inline void remove_quietly(store& from, const std::string& key) noexcept {
    try {
        from.remove(key);
    } catch (const std::exception& failure) {
        log(spdlog::level::warn, [&] {
            return "recovery: could not remove the damaged record of key '" + key + "': " + failure.what();
        });
    }
}

// The store's record, or nothing; a damaged one is reported in `problems`,
// logged, and removed, so the state recovery picks instead can be exported
// in its place (a damaged record may claim any generation). A store that
// cannot be read (locked, damaged file, gone read-only) is no reason to stay
// down when shared memory holds a state: that one is taken, and the store's
// error goes to `problems`. Without a state in shared memory, which copy is
// newest cannot be known, so the error is thrown. A store written by the
// user may throw anything from std::exception (std::runtime_error,
// std::bad_alloc): that is an unreadable store too, and without a state in
// shared memory it is thrown as errc::store_failed carrying its message.
inline std::optional<record> fetch_valid(store& from, const std::string& key, bool memory_has_state,
                                         std::vector<std::string>& problems, bool& unreadable) {
    const auto take_memory = [&](const char* why) {
        unreadable = true;
        problems.emplace_back("the store could not be read, so shared memory's state was taken without "
                              "comparing: " + std::string(why));
        log(spdlog::level::err, [&] { return "recovery of key '" + key + "': " + problems.back(); });
    };
    try {
        std::optional<record> found = from.get(key);
        if (found && !record_generation_in_range(found->generation))
            throw error(errc::record_corrupt, from.describe() + ": record '" + key + "' has generation " +
                                                  std::to_string(found->generation) + ", out of range");
        return found;
    } catch (const error& failure) {
        if (failure.code() == errc::record_corrupt) {
            problems.emplace_back(failure.what());
            log(spdlog::level::err, [&] { return std::string("recovery: ") + failure.what() + "; removing it"; });
            remove_quietly(from, key);
            return std::nullopt;
        }
        if (failure.code() == errc::version_too_new || !memory_has_state) throw;
        take_memory(failure.what());
        return std::nullopt;
    } catch (const std::exception& failure) {
        if (!memory_has_state)
            throw error(errc::store_failed,
                        from.describe() + ": reading key '" + key + "' failed: " + failure.what());
        take_memory(failure.what());
        return std::nullopt;
    }
}

// Turns a store record into a T as keeper::restore does with a slot: the
// same type and schema decode directly (bytes that pass the record's
// checksum but do not decode are another type: decode_failed, never "no
// state"), anything else needs the upgrade hook.
template <class T>
void decode_record(const record& r, const keeper_options<T>& options, const store& from, T& out) {
    const bool same_type = r.fingerprint == type_fingerprint<T>() && r.schema_version == options.schema_version &&
                           r.codec == static_cast<std::uint32_t>(codec_of<T>());
    if (same_type) {
        T decoded = out;
        try {
            decode_into(r.bytes.data(), r.bytes.size(), decoded);
        } catch (const error& failure) {
            if (failure.code() != errc::decode_failed) throw;
            throw_undecodable(from.describe() + ": record '" + r.key + "'", r.generation, r.fingerprint,
                              r.schema_version, type_fingerprint<T>(), options.schema_version, failure.what());
        }
        out = std::move(decoded);
        return;
    }
    if (!options.upgrade)
        throw error(errc::type_mismatch, from.describe() + ": record '" + r.key +
                                             "' was written by another type or schema version (fingerprint " +
                                             fingerprint_text(r.fingerprint) + ", schema " +
                                             std::to_string(r.schema_version) + "; this program has " +
                                             fingerprint_text(type_fingerprint<T>()) + ", schema " +
                                             std::to_string(options.schema_version) +
                                             "); bump schema_version and give keeper_options::upgrade to convert "
                                             "it, or remove the record");
    stored_record old;
    old.generation = r.generation;
    old.fingerprint = r.fingerprint;
    old.schema_version = r.schema_version;
    old.codec = static_cast<codec_kind>(r.codec);
    old.data = r.bytes.data();
    old.size = r.bytes.size();
    out = run_upgrade<T>(options.upgrade, old, from.describe() + ": record '" + r.key + "'", type_fingerprint<T>(),
                         options.schema_version);
}

} // namespace detail

// Opens `kept`'s state: the newest valid of its shared-memory slots and the
// store's record under `prefix + kept.key()`, else `initial` (committed, so
// it is exported too). Throws errc::version_too_new, leaving the record
// untouched, if the store's record has a schema newer than the keeper's;
// errc::decode_failed if the chosen copy passes its checksum but does not
// decode as T (nothing is changed); errc::store_failed if the store cannot
// be read and shared memory holds no state (then which copy is newest
// cannot be known). A store that cannot be read while shared memory holds a
// state does not stop recovery: see recovered::store_unreadable.
//
// Given a bus with subscribers, publishes a recovered event (supervisor
// "recovery", child the key, reason where the state came from, instance its
// generation, took the real time recovery took, at the steady clock). A
// unit with unit_spec::recover_from publishes it on its runtime's bus.
template <class T>
recovered<T> recover(keeper<T>& kept, store& from, T initial, const std::string& prefix = {},
                     event_bus* events = nullptr) {
    const auto began = std::chrono::steady_clock::now();
    recovered<T> result{std::move(initial), recovery_source::initial, 0, 0, {}};
    T in_memory = result.value;
    const std::optional<restore_info> memory = kept.restore_into(in_memory);
    const std::optional<record> stored =
        detail::fetch_valid(from, prefix + kept.key(), memory.has_value(), result.problems, result.store_unreadable);
    if (stored) {
        if (stored->schema_version > kept.options().schema_version) detail::throw_too_new(*stored, kept.options(), from);
        result.store_generation = stored->generation;
    }
    if (stored && (!memory || stored->generation > memory->generation)) {
        // A keeper with side tables exported a group record: its state and
        // its tables as of one commit, imported in one commit here.
        std::vector<detail::table_image> tables;
        if (stored->codec == detail::group_codec) {
            detail::group_image group = detail::parse_group(stored->bytes.data(), stored->bytes.size(),
                                                            from.describe() + ": record '" + stored->key + "'");
            record state = *stored;
            state.codec = group.state_codec;
            state.bytes = std::move(group.state);
            detail::decode_record(state, kept.options(), from, result.value);
            tables = std::move(group.tables);
        } else {
            detail::decode_record(*stored, kept.options(), from, result.value);
        }
        result.source = recovery_source::store;
        // Stores hand on no generation at max_generation or above, so this
        // commit stays within what restore reads.
        result.generation = kept.commit_imported(result.value, stored->generation + 1, tables);
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
    if (events != nullptr && events->any())
        detail::publish_recovered(*events, kept.key(), to_string(result.source), result.generation,
                                  detail::took_since(began), steady_clock().now());
    return result;
}

// Terminate-and-delete without an exporter running: removes `key` from the
// segment (throws errc::key_in_use while a keeper holds it) and `prefix +
// key` from the store. With an exporter running, use exporter::forget.
// Given a bus with subscribers, publishes a forgotten event (supervisor
// "forget", child the key, reason where it was, took, at the steady clock).
inline bool forget(segment& where, store& from, const std::string& key, const std::string& prefix = {},
                   event_bus* events = nullptr) {
    const auto began = std::chrono::steady_clock::now();
    const bool in_memory = where.remove_key(key);
    const bool in_store = from.remove(prefix + key);
    if (events != nullptr && events->any())
        detail::publish_forgotten(*events, key, in_memory, in_store, detail::took_since(began), steady_clock().now());
    return in_memory || in_store;
}

} // namespace keepsake
