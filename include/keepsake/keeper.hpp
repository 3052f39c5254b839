// keepsake/keeper.hpp: the committed state of one key in a segment.
//
// Commit protocol (LMDB's meta pages, with checksums): a key has N >= 2
// slots; a commit writes the slot after the newest valid one, leaving the
// newest untouched, and publishes it by storing its generation last, with
// release ordering. Restore takes the newest slot whose checksum holds. A
// crash at any instant therefore leaves the old or the new state, never a
// mix, and restore says which generation it found.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "keepsake/codec.hpp"
#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/format.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/error.hpp"
#include "keepsake/log.hpp"
#include "keepsake/segment.hpp"

namespace keepsake {

template <class T>
struct keeper_options {
    // Slots per key (2 to 64). More slots keep more old generations around
    // as fallbacks against damaged memory; two are enough for crash safety.
    std::uint32_t slots = 2;
    // Data bytes per slot, fixed when the key is first created. 0 means
    // sizeof(T) for a trivially copyable T, else 16 KiB. A larger state is
    // refused with errc::state_too_large (slots never grow in place).
    std::uint64_t capacity = 0;
    // Schema version written with each commit and expected on restore.
    std::uint32_t schema_version = state_traits<T>::schema_version;
    // Turns bytes of another type or schema version into a T. Without it,
    // such bytes are a type_mismatch error, never reinterpreted.
    std::function<T(const stored_record&)> upgrade;
};

// What restore found.
struct restore_info {
    std::uint64_t generation = 0;   // the generation now in the caller's hands
    std::uint32_t slot = 0;         // the slot it came from
    std::uint32_t skipped_slots = 0;  // newer or other slots that failed validation
    bool upgraded = false;          // the upgrade hook produced the value
};

template <class T>
struct restored {
    T value;
    restore_info info;
};

template <class T>
class keeper {
    static_assert(!std::is_reference_v<T> && !std::is_const_v<T>, "keeper<T> needs a plain value type");

public:
    // Attaches to `key` in `where`, creating the key's slots if it is new.
    // Throws if the key holds another type or schema version and no upgrade
    // hook is given, or if its slots are too small for a trivially copyable T.
    keeper(const segment& where, std::string key, keeper_options<T> options = {})
        : segment_(where.shared_impl()), key_(std::move(key)), options_(std::move(options)) {
        const std::uint64_t capacity = options_.capacity != 0 ? options_.capacity : default_capacity();
        // Refused before attach: attach would create the key with slots
        // this type can never fill.
        if (codec_of<T>() == codec_kind::raw && capacity < sizeof(T))
            throw error(errc::invalid_argument, "keeper_options::capacity " + std::to_string(capacity) +
                                                    " is less than the " + std::to_string(sizeof(T)) +
                                                    " bytes of this state type");
        area_ = segment_->attach(key_, options_.slots, capacity);
        try {
            check_slot_size();
            scan_slots();
        } catch (...) {
            segment_->release_key(key_);
            throw;
        }
    }

    keeper(keeper&& other) noexcept
        : segment_(std::move(other.segment_)), key_(std::move(other.key_)), options_(std::move(other.options_)),
          area_(other.area_), highest_generation_(other.highest_generation_), newest_slot_(other.newest_slot_) {}

    keeper(const keeper&) = delete;
    keeper& operator=(const keeper&) = delete;
    keeper& operator=(keeper&&) = delete;

    ~keeper() {
        if (segment_) segment_->release_key(key_);
    }

    // Makes `value` the committed state and returns its generation. When it
    // returns, a crash of this process (or of the thread) cannot lose it.
    std::uint64_t commit(const T& value) {
        busy_guard guard(busy_, key_);
        const std::uint32_t target = (newest_slot_ + 1) % area_.count;
        detail::slot_header& header = *area_.header(target);
        if (highest_generation_ == ~std::uint64_t{0}) throw_generations_exhausted();
        const std::uint64_t generation = highest_generation_ + 1;
        const std::uint64_t commit_ns = detail::commit_clock_ns();  // for keepsake-inspect; in the checksum
        // Unpublish the target before touching its data; the fence keeps the
        // data stores from being seen ahead of this one.
        detail::store_relaxed(header.generation, std::uint64_t{0});
        detail::fence_release();
        std::size_t size = 0;
        try {
            size = encode(value, area_.data(target), static_cast<std::size_t>(area_.capacity));
        } catch (const error& failure) {
            if (failure.code() != errc::state_too_large) throw;
            throw error(failure.code(), "cannot commit key '" + key_ + "': " + failure.what() +
                                            "; slots are sized when a key is created: delete the key "
                                            "(exporter::forget() while an exporter runs, keepsake::forget() "
                                            "with a store, else segment::remove_key) and create it with a "
                                            "larger keeper_options::capacity");
        }
        const std::uint64_t fingerprint = type_fingerprint<T>();
        const auto codec = static_cast<std::uint32_t>(codec_of<T>());
        detail::store_relaxed(header.size, std::uint64_t{size});
        detail::store_relaxed(header.fingerprint, fingerprint);
        detail::store_relaxed(header.schema_version, options_.schema_version);
        detail::store_relaxed(header.codec, codec);
        detail::store_relaxed(header.commit_ns, commit_ns);
        detail::store_relaxed(header.checksum,
                              detail::slot_checksum(generation, size, fingerprint, options_.schema_version, codec,
                                                    area_.data(target), commit_ns));
        detail::store_release(header.generation, generation);
        highest_generation_ = generation;
        newest_slot_ = target;
        return generation;
    }

    // commit() at a generation of at least `at_least`. Recovery from a store
    // uses it to seed a new segment at the store's generation, so the
    // exports that follow are newer than what the store holds.
    std::uint64_t commit_at_least(const T& value, std::uint64_t at_least) {
        if (at_least != 0 && highest_generation_ < at_least - 1) highest_generation_ = at_least - 1;
        return commit(value);
    }

    // Puts the newest valid committed state into `out`. Returns nothing (and
    // leaves `out` alone) if no slot holds a valid state.
    std::optional<restore_info> restore_into(T& out) {
        busy_guard guard(busy_, key_);
        restore_info info;
        std::uint64_t below = ~std::uint64_t{0};
        while (auto snap = newest_below(below)) {
            below = snap->generation;
            if (!detail::slot_is_valid(area_, *snap)) {
                report_invalid(*snap, "checksum or size check failed");
                ++info.skipped_slots;
                continue;
            }
            try {
                info.upgraded = !matches_this_type(*snap);
                if (info.upgraded) out = upgrade(*snap);
                else decode(*snap, out);
            } catch (const error& failure) {
                if (failure.code() != errc::decode_failed || info.upgraded) throw;
                report_invalid(*snap, failure.what());
                ++info.skipped_slots;
                continue;
            }
            info.generation = snap->generation;
            info.slot = snap->index;
            newest_slot_ = snap->index;
            if (info.skipped_slots != 0)
                detail::log(spdlog::level::warn, [&] {
                    return "key '" + key_ + "': restored generation " + std::to_string(info.generation) +
                           " after skipping " + std::to_string(info.skipped_slots) + " invalid slot(s)";
                });
            return info;
        }
        if (info.skipped_slots != 0)
            detail::log(spdlog::level::err, [&] {
                return "key '" + key_ + "': no valid committed state; " + std::to_string(info.skipped_slots) +
                       " slot(s) failed validation";
            });
        return std::nullopt;
    }

    // restore_into() for a default-constructible T, returning the value.
    std::optional<restored<T>> restore() {
        static_assert(std::is_default_constructible_v<T>,
                      "keeper<T>::restore() needs a default-constructible T; use restore_into(T&)");
        restored<T> result{T{}, {}};
        auto info = restore_into(result.value);
        if (!info) return std::nullopt;
        result.info = *info;
        return result;
    }

    // The newest generation this keeper committed or found (0: none yet).
    std::uint64_t generation() const noexcept { return highest_generation_; }
    const std::string& key() const noexcept { return key_; }
    std::uint64_t slot_capacity() const noexcept { return area_.capacity; }
    const keeper_options<T>& options() const noexcept { return options_; }

private:
    // Catches a second user inside commit/restore of one keeper (re-entry
    // always; another thread almost always). A keeper has one user by
    // contract, so this is a misuse detector, not a lock: a relaxed load and
    // store cost ~1 ns where an exchange costs ~7 ns of a ~20 ns commit.
    class busy_guard {
    public:
        busy_guard(std::atomic<bool>& flag, const std::string& key) : flag_(flag) {
            // Set only when clear: a guard that throws has taken nothing, so
            // it can never leave the flag stuck.
            if (flag_.load(std::memory_order_relaxed))
                throw error(errc::concurrent_use, "keeper '" + key +
                                                      "' was used by two threads at once; a keeper has one "
                                                      "user at a time (give each thread its own key)");
            flag_.store(true, std::memory_order_relaxed);
        }
        ~busy_guard() { flag_.store(false, std::memory_order_release); }
        busy_guard(const busy_guard&) = delete;
        busy_guard& operator=(const busy_guard&) = delete;

    private:
        std::atomic<bool>& flag_;
    };

    std::shared_ptr<detail::segment_impl> segment_;
    std::string key_;
    keeper_options<T> options_;
    detail::slot_area area_{};
    std::uint64_t highest_generation_ = 0;  // highest ever seen, valid or not
    std::uint32_t newest_slot_ = 0;         // the slot the next commit must not touch
    std::atomic<bool> busy_{false};

    static constexpr std::uint64_t default_capacity() noexcept {
        return codec_of<T>() == codec_kind::raw ? sizeof(T) : 16u * 1024u;
    }

    void check_slot_size() const {
        if (codec_of<T>() == codec_kind::raw && area_.capacity < sizeof(T))
            throw error(errc::state_too_large,
                        "key '" + key_ + "' has slots of " + std::to_string(area_.capacity) + " bytes but this type needs " +
                            std::to_string(sizeof(T)) +
                            "; delete the key (exporter::forget() while an exporter runs, keepsake::forget() "
                            "with a store, else segment::remove_key) or use another key");
    }

    // Newest slot with a generation below `below` (0 generations are empty).
    std::optional<detail::slot_snapshot> newest_below(std::uint64_t below) const noexcept {
        std::optional<detail::slot_snapshot> best;
        for (std::uint32_t index = 0; index < area_.count; ++index) {
            const detail::slot_snapshot snap = detail::read_slot_header(area_, index);
            if (snap.generation == 0 || snap.generation >= below) continue;
            if (!best || snap.generation > best->generation) best = snap;
        }
        return best;
    }

    bool matches_this_type(const detail::slot_snapshot& snap) const {
        return snap.fingerprint == type_fingerprint<T>() && snap.schema_version == options_.schema_version &&
               snap.codec == static_cast<std::uint32_t>(codec_of<T>());
    }

    [[noreturn]] void throw_mismatch(const detail::slot_snapshot& snap) const {
        throw error(errc::type_mismatch,
                    "key '" + key_ + "' holds a state written by another type or schema version (fingerprint " +
                        detail::hex64(snap.fingerprint) + ", schema " + std::to_string(snap.schema_version) +
                        "; this keeper expects " + detail::hex64(type_fingerprint<T>()) + ", schema " +
                        std::to_string(options_.schema_version) +
                        "); give keeper_options::upgrade to convert it, or remove the key");
    }

    // Only a damaged slot can report the last generation there is (commits
    // count up by one). Wrapping to 0 would publish an invisible state.
    [[noreturn]] void throw_generations_exhausted() const {
        throw error(errc::segment_corrupt, "key '" + key_ +
                                               "' has a slot at the largest generation there is, which only "
                                               "damaged memory produces; delete the key (exporter::forget() "
                                               "while an exporter runs, keepsake::forget() with a store, else "
                                               "segment::remove_key) to start it afresh");
    }

    T upgrade(const detail::slot_snapshot& snap) const {
        if (!options_.upgrade) throw_mismatch(snap);
        stored_record record;
        record.generation = snap.generation;
        record.fingerprint = snap.fingerprint;
        record.schema_version = snap.schema_version;
        record.codec = static_cast<codec_kind>(snap.codec);
        record.data = area_.data(snap.index);
        record.size = static_cast<std::size_t>(snap.size);
        return options_.upgrade(record);
    }

    // A raw decode cannot fail half-way (the size is checked first); a
    // cereal decode can, so it goes through a temporary and `out` is only
    // touched by a complete value.
    void decode(const detail::slot_snapshot& snap, T& out) const {
        const std::byte* data = area_.data(snap.index);
        const auto size = static_cast<std::size_t>(snap.size);
        if constexpr (codec_of<T>() == codec_kind::raw) {
            decode_into(data, size, out);
        } else {
            T decoded{};
            decode_into(data, size, decoded);
            out = std::move(decoded);
        }
    }

    void report_invalid(const detail::slot_snapshot& snap, const char* why) const {
        detail::log(spdlog::level::err, [&] {
            return "key '" + key_ + "': slot " + std::to_string(snap.index) + " (generation " +
                   std::to_string(snap.generation) + ") is invalid: " + why;
        });
    }

    // On attach: learn the highest generation (so new ones only go up), the
    // newest valid slot (so the next commit spares it), and refuse bytes of
    // another type before a commit could overwrite them.
    void scan_slots() {
        std::optional<detail::slot_snapshot> newest_valid;
        for (std::uint32_t index = 0; index < area_.count; ++index) {
            const detail::slot_snapshot snap = detail::read_slot_header(area_, index);
            if (snap.generation > highest_generation_) highest_generation_ = snap.generation;
            if (!detail::slot_is_valid(area_, snap)) continue;
            if (!newest_valid || snap.generation > newest_valid->generation) newest_valid = snap;
        }
        newest_slot_ = newest_valid ? newest_valid->index : area_.count - 1;
        if (newest_valid && !matches_this_type(*newest_valid) && !options_.upgrade) throw_mismatch(*newest_valid);
    }
};

} // namespace keepsake
