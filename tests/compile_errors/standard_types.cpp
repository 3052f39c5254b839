// expect: compiles
// A state of standard types needs only <keepsake/cereal.hpp>.
#include <keepsake/cereal.hpp>
#include <keepsake/keepsake.hpp>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

struct profile {
    std::string name;
    std::map<std::string, std::vector<int>> scores;
    std::optional<std::pair<int, double>> best;
    std::set<long> seen;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(name, scores, best, seen);
    }
};

int main() {
    keepsake::segment segment("compile-errors");
    keepsake::keeper<profile> kept(segment, "profile");
    kept.commit(profile{});
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});
    keepsake::unit_spec<profile> spec;
    spec.name = "u";
    auto unit = keepsake::start_unit(runtime, spec);
    return static_cast<int>(unit.call([](const profile& p) { return p.scores.size(); }));
}
