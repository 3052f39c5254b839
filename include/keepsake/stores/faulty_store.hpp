// keepsake/stores/faulty_store.hpp: a store that wraps another and fails on
// purpose, to test what a program does when its store misbehaves: every Nth
// call fails, a failing put may first apply half its batch, a failure can be
// a keepsake::error, a foreign exception or a full disk, and every call can
// stall. Settings may change while the store is in use.
#pragma once

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "keepsake/error.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

enum class fault_kind {
    store_error,     // keepsake::error(errc::store_failed)
    foreign,         // std::runtime_error, as a third-party store might throw
    disk_full,       // store_failed saying no space is left
};

class faulty_store : public store {
public:
    explicit faulty_store(store& inner) : inner_(inner) {}

    // Every nth call (put, get, remove, list) fails; 0 turns failures off.
    void fail_every(std::uint32_t n) noexcept { every_.store(n, std::memory_order_relaxed); }
    void fail_with(fault_kind kind) noexcept { kind_.store(kind, std::memory_order_relaxed); }
    // A failing put first writes the first half of its batch.
    void fail_halfway(bool on) noexcept { halfway_.store(on, std::memory_order_relaxed); }
    // Every call first sleeps this long (a slow or hung store).
    void stall(std::chrono::milliseconds each) noexcept { stall_ms_.store(each.count(), std::memory_order_relaxed); }

    std::uint64_t calls() const noexcept { return calls_.load(std::memory_order_relaxed); }
    std::uint64_t failures() const noexcept { return failures_.load(std::memory_order_relaxed); }

    std::vector<std::size_t> put_batch(const std::vector<record>& records) override {
        if (!should_fail()) return inner_.put_batch(records);
        if (halfway_.load(std::memory_order_relaxed) && records.size() > 1)
            inner_.put_batch(std::vector<record>(records.begin(), records.begin() + records.size() / 2));
        raise("put_batch");
    }

    std::optional<record> get(const std::string& key) override {
        if (should_fail()) raise("get");
        return inner_.get(key);
    }

    bool remove(const std::string& key) override {
        if (should_fail()) raise("remove");
        return inner_.remove(key);
    }

    std::vector<std::string> list(const std::string& prefix) override {
        if (should_fail()) raise("list");
        return inner_.list(prefix);
    }

    std::string describe() const override { return "faulty " + inner_.describe(); }

private:
    store& inner_;
    std::atomic<std::uint32_t> every_{0};
    std::atomic<fault_kind> kind_{fault_kind::store_error};
    std::atomic<bool> halfway_{false};
    std::atomic<long long> stall_ms_{0};
    std::atomic<std::uint64_t> calls_{0};
    std::atomic<std::uint64_t> failures_{0};

    bool should_fail() {
        const long long stall_ms = stall_ms_.load(std::memory_order_relaxed);
        if (stall_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(stall_ms));
        const std::uint64_t call = calls_.fetch_add(1, std::memory_order_relaxed) + 1;
        const std::uint32_t every = every_.load(std::memory_order_relaxed);
        return every != 0 && call % every == 0;
    }

    [[noreturn]] void raise(const char* operation) {
        failures_.fetch_add(1, std::memory_order_relaxed);
        const std::string what = describe() + ": injected failure in " + operation;
        switch (kind_.load(std::memory_order_relaxed)) {
        case fault_kind::foreign: throw std::runtime_error(what);
        case fault_kind::disk_full: throw error(errc::store_failed, what + ": No space left on device");
        case fault_kind::store_error: break;
        }
        throw error(errc::store_failed, what);
    }
};

} // namespace keepsake
