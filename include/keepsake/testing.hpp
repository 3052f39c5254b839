// keepsake/testing.hpp: helpers for testing programs built on keepsake (as
// DurableObject ships its own): run a pumped runtime until idle, fire due
// alarms now, read what is committed for a key, and kill a forked run with
// SIGKILL at a moment the test picks. Not for production code.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keepsake/codec.hpp"
#include "keepsake/detail/snapshot.hpp"
#include "keepsake/error.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/segment.hpp"

namespace keepsake::testing {

// A pumped runtime (threads = 0): runs fibers until none is ready, and
// returns how many polls it took. Timers on a manual clock do not fire by
// themselves: advance the clock, then run until idle again.
inline std::size_t run_until_idle(runtime& where, std::size_t max_polls = 1000000) {
    std::size_t polls = 0;
    while (polls < max_polls) {
        ++polls;
        if (where.poll() == 0 && where.poll() == 0) break;
    }
    return polls;
}

// Fires every alarm of `objects` due now, on the calling fiber; returns how
// many handlers ran.
template <class Directory>
std::size_t fire_due_alarms(Directory& objects) {
    return objects.fire_due_alarms();
}

// What is committed for `key` in `where`, as a T: the newest valid
// generation, copied as the exporter copies it. Nothing if the key holds no
// valid state; type_mismatch or decode_failed if it holds another type.
template <class T>
std::optional<T> committed(const segment& where, const std::string& key) {
    const auto view = where.shared_impl()->entry_view_of(key);
    if (!view) return std::nullopt;
    record copied;
    if (detail::snapshot_newest(view->area, 0, copied) != detail::snapshot_status::copied) return std::nullopt;
    if (copied.fingerprint != type_fingerprint<T>() || copied.codec != static_cast<std::uint32_t>(codec_of<T>()))
        throw error(errc::type_mismatch, "key '" + key + "' holds another type than the one asked for");
    T value{};
    decode_into(copied.bytes.data(), copied.bytes.size(), value);
    return value;
}

// Memory a forked child and the test both see (an atomic flag, counters).
template <class T>
T* shared_between_processes() {
    void* memory = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw error(errc::system_error, "mmap of memory shared with a child failed");
    return new (memory) T{};
}

template <class T>
void release_shared(T* object) {
    object->~T();
    ::munmap(object, sizeof(T));
}

// Forks a child that runs `body`, then exits (0; 3 if body threw). The
// child dies with the test process (PR_SET_PDEATHSIG): one that outlived a
// failed test would hold ctest's output pipe open until the timeout.
template <class Body>
pid_t fork_child(Body&& body) {
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) throw error(errc::system_error, "fork failed");
    if (child == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(4);
        try {
            body();
        } catch (...) {
            ::_exit(3);
        }
        ::_exit(0);
    }
    return child;
}

// Runs `body` in a forked child (which dies with the test), waits until the
// child sets `ready` (or `limit` passes, or it exits), lets it run `then`
// longer, and kills it with SIGKILL. Returns true if it was killed while
// running (false: it exited first, or never got ready).
template <class Body>
bool run_and_kill(Body&& body, const std::atomic<int>& ready,
                  std::chrono::microseconds then = std::chrono::microseconds(0),
                  std::chrono::seconds limit = std::chrono::seconds(30)) {
    const pid_t child = fork_child(std::forward<Body>(body));
    const auto deadline = std::chrono::steady_clock::now() + limit;
    bool running = true;
    while (ready.load(std::memory_order_acquire) == 0 && running) {
        int status = 0;
        if (::waitpid(child, &status, WNOHANG) == child || std::chrono::steady_clock::now() > deadline) running = false;
        else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    if (running && then.count() > 0) std::this_thread::sleep_for(then);
    if (running) {
        int status = 0;
        running = ::waitpid(child, &status, WNOHANG) == 0;
    }
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    return running;
}

} // namespace keepsake::testing
