// keepsake/detail/key_index.hpp: an owner's index from key to directory
// entry, 8 bytes a slot (12 to 21 bytes a key).
//
// The keys themselves are in the directory entries, in the segment; the
// index holds only a 32-bit hash of each key and its entry's number, in one
// open-addressed array (linear probing, backward-shift deletion: no
// tombstones). A million hibernated objects cost two keys each here, so a
// node per key (unordered_map<string, uint32_t>: about 100 bytes and a
// second allocation for a long key) was most of what an idle object left on
// the heap. A lookup checks each candidate entry's key in the segment.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "keepsake/detail/checksum.hpp"

namespace keepsake::detail {

class key_index {
public:
    // The entry of `key`: the first candidate with its hash for which
    // holds(entry) says the entry holds `key`.
    template <class Holds>
    std::optional<std::uint32_t> find(std::string_view key, Holds&& holds) const {
        if (slots_.empty()) return std::nullopt;
        const std::uint32_t hash = hash_of(key);
        for (std::size_t at = home(hash);; at = next(at)) {
            const slot& here = slots_[at];
            if (here.entry == 0) return std::nullopt;
            if (here.hash == hash && holds(here.entry - 1)) return here.entry - 1;
        }
    }

    // Points `key` at `entry`, replacing a candidate for which holds() says
    // yes (an entry of the same key that went bad since it was indexed).
    template <class Holds>
    void assign(std::string_view key, std::uint32_t entry, Holds&& holds) {
        if ((used_ + 1) * 4 > slots_.size() * 3) grow();
        const std::uint32_t hash = hash_of(key);
        std::size_t at = home(hash);
        for (; slots_[at].entry != 0; at = next(at))
            if (slots_[at].hash == hash && holds(slots_[at].entry - 1)) break;
        if (slots_[at].entry == 0) ++used_;
        slots_[at] = slot{hash, entry + 1};
    }

    // Forgets `key`'s entry `entry`; false if it was not indexed.
    bool erase(std::string_view key, std::uint32_t entry) noexcept {
        if (slots_.empty()) return false;
        const std::uint32_t hash = hash_of(key);
        std::size_t at = home(hash);
        for (;; at = next(at)) {
            if (slots_[at].entry == 0) return false;
            if (slots_[at].hash == hash && slots_[at].entry == entry + 1) break;
        }
        // Backward shift: move later members of the run into the hole when
        // their home does not lie (cyclically) after the hole.
        for (std::size_t probe = next(at);; probe = next(probe)) {
            const slot moving = slots_[probe];
            if (moving.entry == 0) break;
            const std::size_t want = home(moving.hash);
            const bool stays = at <= probe ? (at < want && want <= probe) : (at < want || want <= probe);
            if (stays) continue;
            slots_[at] = moving;
            at = probe;
        }
        slots_[at] = slot{};
        --used_;
        if (slots_.size() > 64 && used_ * 8 < slots_.size()) {  // after a burst: give the peak's memory back
            try {
                rebuild(slots_.size() / 4);
            } catch (...) {  // out of memory: it stays as large as it was
            }
        }
        return true;
    }

    std::size_t size() const noexcept { return used_; }
    std::size_t bytes() const noexcept { return slots_.capacity() * sizeof(slot); }

private:
    struct slot {
        std::uint32_t hash = 0;
        std::uint32_t entry = 0;  // the entry's number + 1; 0: empty
    };

    std::vector<slot> slots_;  // a power of two long, at most 3/4 used
    std::size_t used_ = 0;

    static std::uint32_t hash_of(std::string_view key) noexcept {
        return static_cast<std::uint32_t>(hash_bytes(key.data(), key.size(), 0x6b65795f696478ull));
    }
    std::size_t home(std::uint32_t hash) const noexcept { return hash & (slots_.size() - 1); }
    std::size_t next(std::size_t at) const noexcept { return (at + 1) & (slots_.size() - 1); }

    void grow() { rebuild(slots_.empty() ? 16 : slots_.size() * 2); }

    void rebuild(std::size_t size) {
        std::vector<slot> old(size);
        old.swap(slots_);
        for (const slot& each : old) {
            if (each.entry == 0) continue;
            std::size_t at = home(each.hash);
            while (slots_[at].entry != 0) at = next(at);
            slots_[at] = each;
        }
    }
};

} // namespace keepsake::detail
