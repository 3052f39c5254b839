// expect: a message's result must be a value, not a reference
#include <keepsake/keepsake.hpp>

struct state {
    long value = 0;
};

int main() {
    keepsake::segment segment("compile-errors");
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});
    keepsake::unit_spec<state> spec;
    spec.name = "u";
    auto unit = keepsake::start_unit(runtime, spec);
    long& value = unit.call([](state& s) -> long& { return s.value; });
    (void)value;
}
