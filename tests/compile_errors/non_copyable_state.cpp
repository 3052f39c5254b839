// expect: a unit's State must be copyable
#include <keepsake/keepsake.hpp>

#include <memory>

struct state {
    std::unique_ptr<int> handle;
};

int main() {
    keepsake::segment segment("compile-errors");
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});
    keepsake::unit_spec<state> spec;
    spec.name = "u";
    keepsake::start_unit(runtime, std::move(spec));
}
