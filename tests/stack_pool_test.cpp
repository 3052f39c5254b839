// The runtime's stack pool: a stopped unit's stack goes to the next fiber,
// the pool keeps at most runtime_options::pooled_stacks, and a guard page
// still turns an overflow into a segfault, on a fresh stack as on a reused one.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdint>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/fiber/operations.hpp>

#include <keepsake/detail/side_stack.hpp>
#include <keepsake/keepsake.hpp>

#include "support.hpp"

namespace stack_pool_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

namespace {

struct count {
    long value = 0;
};

keepsake::runtime_options pumped_with(std::size_t pooled, bool guard_pages, const keepsake::segment* where = nullptr) {
    keepsake::runtime_options options;
    options.threads = 0;
    options.pooled_stacks = pooled;
    options.guard_pages = guard_pages;
    options.stack_size = 64 * 1024;
    options.default_segment = where;
    return options;
}

// Polls until `done` (a fiber's stack is handed back by the scheduler after
// the fiber's last line, not at it).
template <class Done>
void poll_until(keepsake::runtime& rt, Done done) {
    for (int round = 0; round < 1000 && !done(); ++round) rt.poll();
}

[[gnu::noinline]] int deeper(int depth) {
    volatile char frame[512];
    frame[0] = static_cast<char>(depth);
    if (depth == 0) return frame[0];
    return deeper(depth - 1) + frame[0];
}

// Where the overflowing fiber began (near its stack's top), and the child's
// fault handler: exits 7 when the fault is in that stack's guard page (64 KiB
// of stack below the top, then the guard's 4 KiB), 8 elsewhere.
volatile std::uintptr_t fiber_top = 0;

void on_fault(int, siginfo_t* info, void*) {
    const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(info->si_addr);
    const std::uintptr_t below = fiber_top - address;
    ::_exit(address < fiber_top && below > 56 * 1024 && below <= 72 * 1024 ? 7 : 8);
}

void catch_faults_on_their_own_stack() {
    static char alternate[64 * 1024];
    stack_t where{};
    where.ss_sp = alternate;
    where.ss_size = sizeof(alternate);
    ::sigaltstack(&where, nullptr);
    struct sigaction action {};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    ::sigaction(SIGSEGV, &action, nullptr);
}

// Runs `body` in a child process; its wait status.
template <class Body>
int in_child(Body body) {
    const pid_t child = ::fork();
    if (child == 0) {
        std::signal(SIGSEGV, SIG_DFL);
        body();
        ::_exit(42);  // survived
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    return status;
}

// Killed by the fault (or, under a sanitizer, reported and ended by it).
bool crashed(int status) {
    if (WIFSIGNALED(status)) return WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS;
    return WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 42 && WEXITSTATUS(status) != 3;
}

} // namespace

TEST_CASE("stack pool: a stack handed back is handed out again, newest first", "[runtime][stacks]") {
    const bool guard = GENERATE(true, false);
    auto pool = std::make_shared<keepsake::detail::stack_pool>(20 * 1024, guard, 8);
    keepsake::detail::pooled_stack_allocator allocator(pool);
    auto first = allocator.allocate();
    auto second = allocator.allocate();
    CHECK(first.size == second.size);
    CHECK(first.size == (guard ? 24u : 20u) * 1024);  // whole pages, plus the guard
    CHECK(pool->stats().fresh == 2);
    CHECK(pool->stats().mappings == 1);  // both carved from one mapping
    allocator.deallocate(first);
    allocator.deallocate(second);
    CHECK(pool->stats().pooled == 2);
    auto again = allocator.allocate();
    CHECK(again.sp == second.sp);
    CHECK(pool->stats().reused == 1);
    CHECK(pool->stats().fresh == 2);
    static_cast<char*>(again.sp)[-1] = 1;  // writable
    allocator.deallocate(again);
}

TEST_CASE("stack pool: units started one after another reuse one stack", "[runtime][stacks]") {
    test_support::shm_dir dir;
    keepsake::segment seg("stacks", dir.options());
    keepsake::runtime rt(pumped_with(16, GENERATE(true, false), &seg));
    for (int round = 0; round < 50; ++round) {
        keepsake::unit_spec<count> spec;
        spec.name = "u" + std::to_string(round);
        auto unit = keepsake::start_unit(rt, spec);
        CHECK(unit.call([](count& state) { return ++state.value; }) == 1);
        keepsake::stop_unit(rt, unit);
        poll_until(rt, [&] { return rt.stack_stats().pooled == 1; });
        REQUIRE(rt.stack_stats().pooled == 1);
    }
    const auto stats = rt.stack_stats();
    CHECK(stats.fresh == 1);
    CHECK(stats.reused == 49);
    CHECK(stats.released == 0);
}

TEST_CASE("stack pool: keeps at most pooled_stacks, releases the rest; 0 turns it off", "[runtime][stacks]") {
    // Guarded stacks past the bound are unmapped; unguarded ones drop their
    // pages and keep their address range for later fibers.
    const bool guard = GENERATE(true, false);
    keepsake::runtime rt(pumped_with(4, guard));
    bool go = false;
    std::size_t ended = 0;
    auto start_ten = [&] {
        for (int index = 0; index < 10; ++index)
            rt.spawn([&] {
                while (!go) boost::this_fiber::yield();
                ++ended;
            });
        poll_until(rt, [] { return false; });  // every fiber waits on go
    };
    start_ten();
    CHECK(rt.stack_stats().fresh == 10);
    go = true;
    poll_until(rt, [&] { return ended == 10 && rt.stack_stats().pooled + rt.stack_stats().released == 10; });
    auto stats = rt.stack_stats();
    CHECK(stats.pooled == 4);
    CHECK(stats.released == 6);

    go = false;
    start_ten();
    stats = rt.stack_stats();
    CHECK(stats.reused == 4);
    CHECK(stats.fresh == (guard ? 16u : 10u));
    CHECK(stats.recycled == (guard ? 0u : 6u));
    CHECK(stats.pooled == 0);
    go = true;
    poll_until(rt, [&] { return ended == 20 && rt.stack_stats().pooled == 4; });
    CHECK(rt.stack_stats().pooled == 4);

    keepsake::runtime without(pumped_with(0, true));
    without.spawn([] {});
    poll_until(without, [] { return false; });
    CHECK(without.stack_stats().fresh == 0);
    CHECK(without.stack_stats().mappings == 0);
}

TEST_CASE("stack pool: a guard page turns an overflow into a segfault, on a fresh and a reused stack",
          "[runtime][stacks]") {
    const bool reused = GENERATE(false, true);
    const int status = in_child([reused] {
        keepsake::runtime rt(pumped_with(8, true));
        if (reused) {
            rt.spawn([] {});
            poll_until(rt, [&] { return rt.stack_stats().pooled == 1; });
        }
        bool began = false;
        catch_faults_on_their_own_stack();
        rt.spawn([&] {
            char here = 0;
            fiber_top = reinterpret_cast<std::uintptr_t>(&here);
            began = true;
            deeper(1 << 20);  // 512 MiB of frames on a 64 KiB stack
        });
        if (rt.stack_stats().reused != (reused ? 1u : 0u)) ::_exit(3);
        poll_until(rt, [&] { return began; });
        ::_exit(42);  // never reached: the fiber overflowed
    });
    INFO("wait status " << status);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 7);  // the fault was in the guard page

    // The guard page of a carved stack, written directly.
    const int direct = in_child([] {
        keepsake::detail::stack_pool pool(16 * 1024, true, 8);
        auto stack = pool.allocate();
        auto other = pool.allocate();  // the next stack of the same mapping lies above the first's guard
        pool.deallocate(stack);
        stack = pool.allocate();
        if (pool.stats().reused != 1) ::_exit(3);
        static_cast<volatile char*>(stack.sp)[-static_cast<std::ptrdiff_t>(stack.size)] = 1;
        pool.deallocate(other);
    });
    INFO("wait status " << direct);
    CHECK(crashed(direct));
}

TEST_CASE("side stack: a call runs on a pooled stack, and its throw and its suspension come back to the caller",
          "[runtime][stacks]") {
    keepsake::runtime rt(pumped_with(8, GENERATE(true, false)));
    keepsake::detail::stack_pool side(64 * 1024, true, 4);
    int finished = 0;
    auto on_fiber = [&] {
        char here = 0;
        const auto own = reinterpret_cast<std::uintptr_t>(&here);
        std::uintptr_t there = 0;
        keepsake::detail::on_side_stack(&side, [&] {
            char local = 0;
            there = reinterpret_cast<std::uintptr_t>(&local);
            boost::this_fiber::yield();  // another fiber takes the side pool meanwhile
        });
        // Not on the fiber's own 64 KiB stack.
        CHECK((there > own ? there - own : own - there) > 64 * 1024);
        CHECK_THROWS_WITH(keepsake::detail::on_side_stack(&side, [] { throw std::runtime_error("thrown on the side"); }),
                          "thrown on the side");
        ++finished;
    };
    rt.spawn(on_fiber);
    rt.spawn(on_fiber);
    poll_until(rt, [&] { return finished == 2; });
    REQUIRE(finished == 2);
    // Two calls suspended at once took two stacks; later calls reused them.
    CHECK(side.stats().fresh == 2);
    CHECK(side.stats().reused == 2);
    CHECK(side.stats().pooled == 2);
    int in_place = 0;
    keepsake::detail::on_side_stack(nullptr, [&] { ++in_place; });  // no pool: in place
    CHECK(in_place == 1);
}

TEST_CASE("side stack: a worker's start and its init hook run on a side stack, its messages on its own",
          "[runtime][stacks]") {
    test_support::shm_dir dir;
    keepsake::segment seg("side", dir.options());
    keepsake::runtime rt(pumped_with(16, GENERATE(true, false), &seg));
    std::uintptr_t at_init = 0;
    keepsake::unit_spec<count> spec;
    spec.name = "u";
    spec.init = [&](count&, const keepsake::start_info&) {
        char local = 0;
        at_init = reinterpret_cast<std::uintptr_t>(&local);
    };
    auto unit = keepsake::start_unit(rt, spec);
    std::uintptr_t at_message = 0;
    unit.call([&](count& state) {
        char local = 0;
        ++state.value;
        at_message = reinterpret_cast<std::uintptr_t>(&local);
    });
    REQUIRE(at_init != 0);
    CHECK((at_init > at_message ? at_init - at_message : at_message - at_init) > 64 * 1024);
    REQUIRE(rt.side_stacks() != nullptr);
    CHECK(rt.side_stacks()->stats().pooled == 1);  // taken for the start, handed back
    // A start that throws (the init hook) is a start failure, as without a side stack.
    keepsake::unit_spec<count> failing;
    failing.name = "f";
    failing.init = [](count&, const keepsake::start_info&) { throw std::runtime_error("init refuses"); };
    const keepsake::error refused = test_support::error_from([&] { keepsake::start_unit(rt, failing); });
    CHECK(refused.code() == keepsake::errc::start_failed);
    CHECK_THAT(refused.what(), Catch::Matchers::Contains("init refuses"));
    CHECK(unit.call([](count& state) { return state.value; }) == 1);
    // Without a stack pool there are no side stacks: the start runs in place.
    keepsake::runtime_options unpooled = pumped_with(0, true, &seg);
    keepsake::runtime without(unpooled);
    CHECK(without.side_stacks() == nullptr);
    spec.name = "w";
    auto in_place = keepsake::start_unit(without, spec);
    CHECK(in_place.call([](count& state) { return ++state.value; }) == 1);
}

}  // namespace stack_pool_tests
