// keepsake-inspect: the shipped inspect tool. It knows the built-in types
// below (dump --json); for your own state types, build your own inspector
// (README, "keepsake-inspect"): a main() like this one that registers them.
#include <string>

#include <cereal/types/string.hpp>

#include <keepsake/inspect.hpp>

int main(int argc, char** argv) {
    keepsake::inspector tool;
    tool.register_type<bool>("bool")
        .register_type<int>("int")
        .register_type<unsigned>("unsigned")
        .register_type<long>("long")
        .register_type<unsigned long>("unsigned long")
        .register_type<long long>("long long")
        .register_type<unsigned long long>("unsigned long long")
        .register_type<float>("float")
        .register_type<double>("double")
        .register_type<std::string>("std::string");
    return tool.run(argc, argv);
}
