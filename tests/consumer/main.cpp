// Built against an installed keepsake: commits, reopens, restores.
#include <keepsake/keepsake.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    keepsake::segment_options options;
    options.directory = argv[1];
    {
        keepsake::segment s("consumer", options);
        keepsake::keeper<long> counter(s, "counter");
        counter.commit(41);
        counter.commit(42);
    }
    keepsake::segment s("consumer", options);
    keepsake::keeper<long> counter(s, "counter");
    auto kept = counter.restore();
    if (!kept || kept->value != 42 || kept->info.generation != 2) return 1;
    std::printf("consumer restored %ld at generation %llu\n", kept->value,
                static_cast<unsigned long long>(kept->info.generation));
    return 0;
}
