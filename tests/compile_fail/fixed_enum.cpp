// Must compile: the same states with a fixed underlying type.
#include <string>

#include <cereal/types/string.hpp>
#include <keepsake/codec.hpp>

enum color : unsigned char { red, green, blue };
enum class shade { light, dark };
struct pixel {
    color tint;
    shade tone;
    int x;
};
struct label {
    std::string text;
    color tint = red;
    template <class Archive>
    void serialize(Archive& archive) { archive(text, tint); }
};

int main() {
    std::byte bytes[64] = {};
    pixel raw{};
    label cereal;
    try {
        keepsake::decode_into(bytes, sizeof(pixel), raw);
        keepsake::decode_into(bytes, sizeof bytes, cereal);
    } catch (const keepsake::error&) {
    }
}
