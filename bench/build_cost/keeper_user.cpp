// A typical file of a program that keeps its state with keepers, no units:
// bench/build_cost.sh times its compile. It must not pay for Boost.Fiber
// or the supervisor.
#include <keepsake/keeper.hpp>
#include <keepsake/recovery.hpp>
#include <keepsake/stores/file_store.hpp>

#include <cstdio>

struct robot {
    long tick = 0;
    double position[3] = {};
};

int main() {
    keepsake::segment segment("robot");
    keepsake::keeper<robot> kept(segment, "robot");
    keepsake::file_store store("/var/tmp/robot-state");
    auto state = keepsake::recover(kept, store, robot{});
    std::printf("resumed at tick %ld (%s)\n", state.value.tick, keepsake::to_string(state.source));
    for (int i = 0; i < 1000; ++i) {
        ++state.value.tick;
        kept.commit(state.value);
    }
}
