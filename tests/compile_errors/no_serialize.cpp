// expect: which needs a serialize function
#include <keepsake/keepsake.hpp>

#include <string>

struct profile {
    std::string name;
};

int main() {
    keepsake::segment segment("compile-errors");
    keepsake::keeper<profile> kept(segment, "profile");
    kept.commit(profile{"ada"});
}
