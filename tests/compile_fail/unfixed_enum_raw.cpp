// Must not compile: a raw-codec state holding an enum without a fixed
// underlying type (a damaged byte would be undefined behaviour).
#include <keepsake/codec.hpp>

enum color { red, green, blue };
struct pixel {
    color tint;
    int x;
};

int main() {
    std::byte bytes[sizeof(pixel)] = {};
    pixel out{};
    keepsake::decode_into(bytes, sizeof bytes, out);
}
