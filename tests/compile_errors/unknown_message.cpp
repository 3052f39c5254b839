// expect: the unit cannot serve this message
#include <keepsake/keepsake.hpp>

struct account {
    long balance = 0;
};
struct deposit {
    long amount;
};
struct withdraw {
    long amount;
};
struct bank {
    long operator()(account& a, const deposit& d) const { return a.balance += d.amount; }
};

int main() {
    keepsake::segment segment("compile-errors");
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});
    keepsake::unit_spec<account, bank> spec;
    spec.name = "u";
    auto unit = keepsake::start_unit(runtime, spec);
    unit.cast(withdraw{5});
}
