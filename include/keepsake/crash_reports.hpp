// keepsake/crash_reports.hpp: one line on stderr for each worker crash,
// give-up and store failure, by default, as OTP's logger prints crash
// reports: a program that crashes and restarts says so even when nobody set
// up logging. Rate-limited per kind (a crash loop prints a few lines a
// second, then one line saying how many it left out); one call makes
// keepsake quiet: keepsake::set_crash_reports(false).
//
// The path of a crash stays cheap and allocation-free: off, a report is one
// relaxed load; on, a coarse clock read and a short lock, and a line built
// in a fixed buffer only when the rate allows it.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <string_view>
#include <utility>

#include <time.h>
#include <unistd.h>

namespace keepsake {

enum class report_kind {
    crash,          // a worker crashed (or a child failed to restart)
    give_up,        // a unit or supervisor exceeded its restart intensity
    store_failure,  // an exporter's store failed, refused a record, or stop ran out of time
};

inline const char* to_string(report_kind kind) noexcept {
    switch (kind) {
    case report_kind::crash: return "crash";
    case report_kind::give_up: return "give-up";
    case report_kind::store_failure: return "store failure";
    }
    return "unknown";
}

struct crash_report_options {
    bool enabled = true;
    // Lines per second for each kind; the rest are counted, and the next
    // line of that kind says how many were left out.
    std::uint32_t lines_per_second = 10;
    // Where lines go (without a newline), e.g. to your own logger; null:
    // stderr. Called under a lock, one line at a time, on the thread that
    // crashed: keep it short, and do not call keepsake from it.
    std::function<void(std::string_view line)> sink;
};

namespace detail {

// A line built in place: no allocation, cut (with "...") at its capacity.
class report_line {
public:
    report_line& operator<<(std::string_view text) noexcept {
        const std::size_t room = text_.size() - size_;
        const std::size_t taken = std::min(room, text.size());
        std::memcpy(text_.data() + size_, text.data(), taken);
        size_ += taken;
        if (taken < text.size()) std::memcpy(text_.data() + text_.size() - 3, "...", 3);
        return *this;
    }
    report_line& operator<<(std::uint64_t number) noexcept {
        char digits[24];
        std::size_t at = sizeof(digits);
        do {
            digits[--at] = static_cast<char>('0' + number % 10);
            number /= 10;
        } while (number != 0);
        return *this << std::string_view(digits + at, sizeof(digits) - at);
    }
    // A span of time as people write it: whole seconds, else milliseconds.
    report_line& operator<<(std::chrono::nanoseconds span) noexcept {
        const auto count = static_cast<std::uint64_t>(std::max<std::int64_t>(span.count(), 0));
        if (count % 1000000000u == 0) return *this << count / 1000000000u << " s";
        return *this << count / 1000000u << " ms";
    }
    std::string_view view() const noexcept { return {text_.data(), size_}; }

private:
    std::array<char, 512> text_{};
    std::size_t size_ = 0;
};

inline std::int64_t coarse_seconds() noexcept {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return static_cast<std::int64_t>(now.tv_sec);
}

class crash_reporter {
public:
    bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }

    void set_enabled(bool on) noexcept { enabled_.store(on, std::memory_order_relaxed); }

    // What was left out so far is said where it would have gone; the new
    // rules then count from zero.
    void configure(crash_report_options options) {
        std::lock_guard<std::mutex> lock(mutex_);
        restart_windows();
        limit_ = options.lines_per_second;
        sink_ = std::move(options.sink);
        enabled_.store(options.enabled, std::memory_order_relaxed);
    }

    // For tests: the seconds the rate limit counts in (null: the real ones).
    void set_time_source(std::int64_t (*seconds)() noexcept) {
        std::lock_guard<std::mutex> lock(mutex_);
        restart_windows();
        seconds_ = seconds != nullptr ? seconds : &coarse_seconds;
    }

    // Writes the line `fill(line)` builds, if reports are on and the rate
    // allows it; `fill` runs only then.
    template <class Fill>
    void report(report_kind kind, Fill&& fill) noexcept {
        if (!enabled()) return;
        std::lock_guard<std::mutex> lock(mutex_);
        window& current = windows_[static_cast<std::size_t>(kind)];
        const std::int64_t now = seconds_();
        if (now != current.second) {
            flush(kind, current);
            current = window{now, 0, 0};
        }
        if (current.lines >= limit_) {
            ++current.suppressed;
            return;
        }
        ++current.lines;
        report_line line;
        line << "keepsake: ";
        fill(line);
        emit(line.view());
    }

    // At exit: what the last second left out, to stderr (a sink of the
    // program's may be gone by then).
    void flush_at_exit() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!sink_) restart_windows();
    }

private:
    struct window {
        std::int64_t second = -1;
        std::uint32_t lines = 0;
        std::uint64_t suppressed = 0;
    };

    std::atomic<bool> enabled_{true};
    std::mutex mutex_;  // the fields below
    std::uint32_t limit_ = crash_report_options{}.lines_per_second;
    std::function<void(std::string_view)> sink_;
    std::int64_t (*seconds_)() noexcept = &coarse_seconds;
    std::array<window, 3> windows_{};

    void restart_windows() noexcept {
        for (std::size_t kind = 0; kind < windows_.size(); ++kind) {
            if (enabled()) flush(static_cast<report_kind>(kind), windows_[kind]);
            windows_[kind] = window{};
        }
    }

    void flush(report_kind kind, window& ended) noexcept {
        if (ended.suppressed == 0) return;
        report_line line;
        line << "keepsake: " << ended.suppressed << " more " << to_string(kind) << " report(s) left out (at most "
             << std::uint64_t{limit_} << " a second; keepsake::set_crash_reports(false) silences them)";
        ended.suppressed = 0;
        emit(line.view());
    }

    void emit(std::string_view line) noexcept {
        if (sink_) {
            try {
                sink_(line);
            } catch (...) {
                // A sink's failure is the sink's: the crash is reported or not, and goes on.
            }
            return;
        }
        write_all(line);
        write_all("\n");
    }

    static void write_all(std::string_view bytes) noexcept {
        while (!bytes.empty()) {
            const ssize_t written = ::write(STDERR_FILENO, bytes.data(), bytes.size());
            if (written < 0 && errno == EINTR) continue;
            if (written <= 0) return;
            bytes.remove_prefix(static_cast<std::size_t>(written));
        }
    }
};

// Prints what the last second left out when the program exits.
struct crash_report_exit_flush {
    crash_reporter* reporter;
    ~crash_report_exit_flush() { reporter->flush_at_exit(); }
};

// One reporter per program, never destroyed (threads may still crash while
// the program exits) and made without the heap (the path of a crash
// allocates nothing).
inline crash_reporter& crash_reports() {
    alignas(crash_reporter) static unsigned char storage[sizeof(crash_reporter)];
    static crash_reporter* const reporter = new (storage) crash_reporter();
    static crash_report_exit_flush at_exit{reporter};
    return *reporter;
}

template <class Fill>
void report(report_kind kind, Fill&& fill) noexcept {
    crash_reports().report(kind, std::forward<Fill>(fill));
}

} // namespace detail

// true (the default): crash, give-up and store-failure reports (on stderr,
// or the sink set below); false: none. Any thread, any time.
inline void set_crash_reports(bool enabled) { detail::crash_reports().set_enabled(enabled); }

// On or off, the rate, and where the lines go.
inline void set_crash_reports(crash_report_options options) { detail::crash_reports().configure(std::move(options)); }

} // namespace keepsake
