// Must not compile: a cereal state holding an enum without a fixed
// underlying type.
#include <string>

#include <cereal/types/string.hpp>
#include <keepsake/codec.hpp>

enum color { red, green, blue };
struct label {
    std::string text;
    color tint = red;
    template <class Archive>
    void serialize(Archive& archive) { archive(text, tint); }
};

int main() {
    std::byte bytes[64] = {};
    label out;
    keepsake::decode_into(bytes, sizeof bytes, out);
}
