// A typical file of a program that uses units: the README's "Units and
// supervisors" example (a supervised unit with typed messages, calls,
// casts, a crash). bench/build_cost.sh times its compile.
#include <keepsake/keepsake.hpp>

#include <stdexcept>

struct account {
    long balance = 0;
};
struct deposit {
    long amount;
};
struct balance {};
struct bank {
    long operator()(account& a, const deposit& d) const { return a.balance += d.amount; }
    long operator()(const account& a, const balance&) const { return a.balance; }
};

int main() {
    keepsake::segment segment("bank");
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});
    keepsake::unit_spec<account, bank> alice;
    alice.name = "alice";
    keepsake::supervisor_spec tree;
    tree.name = "accounts";
    tree.flags.strategy = keepsake::strategy::one_for_one;
    tree.children.push_back(keepsake::child(alice));
    auto accounts = keepsake::start_supervisor(runtime, tree);
    auto unit = *keepsake::whereis<account, bank>(runtime, "alice");
    unit.cast(deposit{10});
    long now = unit.call(deposit{5});
    unit.call([](account& a) { a.balance *= 2; });
    try {
        unit.call([](account&) -> int { throw std::runtime_error("bug"); });
    } catch (const keepsake::worker_crashed&) {
    }
    now = unit.call(balance{});
    return now == 30 ? 0 : 1;
}
