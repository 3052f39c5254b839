// keepsake/detail/space.hpp: the free space of a segment's data area, as
// this process (the owner) knows it.
//
// It lives in the owner's private memory, never in the segment: the owner
// builds it at open from what the directory references, and changes it as
// keys are added, moved and removed. A crash loses it, and the next owner
// builds it again from the directory, which is always consistent. So no
// crash can leave the segment with space that is both free and in use, or
// with space that is lost for good.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <optional>

namespace keepsake::detail {

class free_space {
public:
    // Everything in [begin, end) is free (before the used ranges are taken out).
    void reset(std::uint64_t begin, std::uint64_t end) {
        ranges_.clear();
        if (end > begin) ranges_.emplace(begin, end - begin);
    }

    // Takes [offset, offset + size) out, as found in use at open. False if
    // any of it was not free (two entries claim the same bytes).
    bool take(std::uint64_t offset, std::uint64_t size) {
        auto at = ranges_.upper_bound(offset);
        if (at == ranges_.begin()) return false;
        --at;
        const std::uint64_t start = at->first;
        const std::uint64_t length = at->second;
        if (offset + size > start + length) return false;
        ranges_.erase(at);
        if (offset > start) ranges_.emplace(start, offset - start);
        if (start + length > offset + size) ranges_.emplace(offset + size, start + length - offset - size);
        return true;
    }

    // The lowest free range of `size` bytes (first fit keeps the data area
    // packed towards its start), taken; nothing if none is large enough.
    std::optional<std::uint64_t> allocate(std::uint64_t size) {
        for (auto at = ranges_.begin(); at != ranges_.end(); ++at) {
            if (at->second < size) continue;
            const std::uint64_t offset = at->first;
            const std::uint64_t left = at->second - size;
            ranges_.erase(at);
            if (left != 0) ranges_.emplace(offset + size, left);
            return offset;
        }
        return std::nullopt;
    }

    // Gives [offset, offset + size) back, merged with its neighbours.
    void release(std::uint64_t offset, std::uint64_t size) {
        if (size == 0) return;
        auto next = ranges_.lower_bound(offset);
        if (next != ranges_.begin()) {
            auto before = std::prev(next);
            if (before->first + before->second == offset) {
                offset = before->first;
                size += before->second;
                ranges_.erase(before);
            }
        }
        if (next != ranges_.end() && offset + size == next->first) {
            size += next->second;
            ranges_.erase(next);
        }
        ranges_.emplace(offset, size);
    }

    // Free bytes at the very end of the area that ends at `end`: a growth
    // of the segment extends them.
    std::uint64_t free_at_end(std::uint64_t end) const {
        if (ranges_.empty()) return 0;
        const auto last = std::prev(ranges_.end());
        return last->first + last->second == end ? last->second : 0;
    }

    std::uint64_t total() const {
        std::uint64_t sum = 0;
        for (const auto& range : ranges_) sum += range.second;
        return sum;
    }

    std::uint64_t largest() const {
        std::uint64_t best = 0;
        for (const auto& range : ranges_) best = range.second > best ? range.second : best;
        return best;
    }

private:
    std::map<std::uint64_t, std::uint64_t> ranges_;  // offset -> length, disjoint, not adjacent
};

} // namespace keepsake::detail
