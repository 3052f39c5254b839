// keepsake/stores/memory_store.hpp: a store in this process's memory. It
// survives nothing; it is for tests, and for measuring the exporter without
// a disk.
#pragma once

#include <atomic>
#include <map>
#include <mutex>

#include "keepsake/store.hpp"

namespace keepsake {

class memory_store : public store {
public:
    std::vector<std::size_t> put_batch(const std::vector<record>& records) override {
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<std::size_t> skipped;
        for (std::size_t i = 0; i < records.size(); ++i) {
            const record& r = records[i];
            auto found = records_.find(r.key);
            if (found == records_.end()) records_.emplace(r.key, r);
            else if (r.generation > found->second.generation) found->second = r;
            else skipped.push_back(i);
        }
        puts_.fetch_add(records.size(), std::memory_order_relaxed);
        return skipped;
    }

    std::optional<record> get(const std::string& key) override {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = records_.find(key);
        if (found == records_.end()) return std::nullopt;
        return found->second;
    }

    bool remove(const std::string& key) override {
        std::lock_guard<std::mutex> lock(mutex_);
        return records_.erase(key) != 0;
    }

    std::vector<std::string> list(const std::string& prefix) override {
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<std::string> keys;
        for (auto it = records_.lower_bound(prefix); it != records_.end() && detail::has_prefix(it->first, prefix); ++it)
            keys.push_back(it->first);
        return keys;
    }

    std::string describe() const override { return "memory store"; }

    // Records handed to put_batch so far (written or skipped as older).
    std::uint64_t records_put() const noexcept { return puts_.load(std::memory_order_relaxed); }

private:
    std::mutex mutex_;
    std::map<std::string, record> records_;
    std::atomic<std::uint64_t> puts_{0};
};

} // namespace keepsake
