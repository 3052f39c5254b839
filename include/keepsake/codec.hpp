// keepsake/codec.hpp: how a state becomes bytes in a slot and back.
//
// A trivially copyable T is stored as its bytes (codec_kind::raw); any other T
// goes through cereal's binary archive (codec_kind::cereal_binary), written
// straight into the slot so a commit allocates nothing. state_traits<T> names
// the type and its schema version; specialise it to change either.
#pragma once

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <istream>
#include <new>
#include <ostream>
#include <streambuf>
#include <string>
#include <type_traits>
#include <typeinfo>

#include <cereal/archives/binary.hpp>

#include "keepsake/detail/archives.hpp"
#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/format.hpp"
#include "keepsake/detail/reflect.hpp"
#include "keepsake/error.hpp"

namespace keepsake {

enum class codec_kind : std::uint32_t { raw = 1, cereal_binary = 2 };

// Specialise for your state type to set its schema version (bump it when the
// meaning or layout of the bytes changes) or a name that survives renames.
// A specialisation may also declare, each optional:
//   static constexpr std::uint64_t layout = ...;   // your own layout tag: change it
//                                                  // whenever the bytes change
//   static constexpr codec_kind codec = codec_kind::cereal_binary;  // a trivially
//                                                  // copyable T through its serialize()
//   static bool check_bytes(const std::byte* data, std::size_t size);  // raw codec:
//                                                  // may these bytes become a T?
template <class T>
struct state_traits {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return typeid(T).name(); }
};

// Committed bytes as found in a slot, handed to an upgrade hook when they
// were written by another type or schema version.
struct stored_record {
    std::uint64_t generation = 0;
    std::uint64_t fingerprint = 0;
    std::uint32_t schema_version = 0;
    codec_kind codec = codec_kind::raw;
    const std::byte* data = nullptr;
    std::size_t size = 0;
};

namespace detail {

template <class Traits, class = void>
struct declared_codec {
    static constexpr bool present = false;
};
template <class Traits>
struct declared_codec<Traits, std::void_t<decltype(Traits::codec)>> {
    static constexpr bool present = true;
};

template <class Traits, class = void>
struct declared_layout {
    static constexpr std::uint64_t value = 0;
};
template <class Traits>
struct declared_layout<Traits, std::void_t<decltype(Traits::layout)>> {
    static constexpr std::uint64_t value = static_cast<std::uint64_t>(Traits::layout) | 1u;
};

template <class Traits, class = void>
struct declares_check_bytes : std::false_type {};
template <class Traits>
struct declares_check_bytes<Traits, std::void_t<decltype(Traits::check_bytes(std::declval<const std::byte*>(),
                                                                              std::size_t{}))>> : std::true_type {};

} // namespace detail

template <class T>
constexpr codec_kind codec_of() noexcept {
    if constexpr (detail::declared_codec<state_traits<T>>::present) {
        static_assert(state_traits<T>::codec == codec_kind::cereal_binary || std::is_trivially_copyable_v<T>,
                      "state_traits<T>::codec is raw but T is not trivially copyable: only trivially copyable "
                      "types can be stored as their bytes");
        return state_traits<T>::codec;
    } else {
        return std::is_trivially_copyable_v<T> ? codec_kind::raw : codec_kind::cereal_binary;
    }
}

namespace detail {

// What the codec checks of a raw T's bytes before they become a T: the
// fields it can see (reflect.hpp), computed once.
template <class T>
const probed_layout& raw_layout() {
    static const probed_layout layout = probe_layout<T>();
    return layout;
}

// What identifies the layout of T's bytes beyond its name and size: the
// fields of a raw aggregate, or the shape of a cereal type's archive and its
// class version; 0 when nothing more can be seen.
template <class T>
std::uint64_t layout_words() {
    std::uint64_t words = declared_layout<state_traits<T>>::value;
    if constexpr (codec_of<T>() == codec_kind::raw) {
        for (std::uint64_t word : raw_layout<T>().words) words = mix_words(words, word, 0x6669656cu, 0);
    } else {
        words = mix_words(words, shape_of<T>(), cereal::detail::Version<T>::version, 0x63657265u);
    }
    return words;
}

} // namespace detail

// Identifies (type name, size, alignment, codec, layout): a keeper refuses
// bytes with another fingerprint unless an upgrade hook takes them. The
// layout part is what catches a field added without a change of size (into
// padding): README "What the codecs check" says what it sees and what not.
template <class T>
std::uint64_t type_fingerprint() {
    static const std::uint64_t fingerprint = [] {
        const std::string name = state_traits<T>::type_name();
        const std::uint64_t identity =
            detail::mix_words(detail::hash_bytes(name.data(), name.size()), sizeof(T), alignof(T),
                              static_cast<std::uint64_t>(codec_of<T>()));
        return detail::mix_words(identity, detail::layout_words<T>(), 0x6c61796fu, 0);
    }();
    return fingerprint;
}

// Fingerprints as messages and keepsake-inspect print them (0x and 16 hex digits).
inline std::string fingerprint_text(std::uint64_t fingerprint) { return detail::hex64(fingerprint); }

namespace detail {

// A streambuf over a fixed span that counts everything written to it and
// keeps what fits: an encode that does not fit learns the size it needs in
// the same pass, and nothing throws (cereal would, at a short write).
class span_buffer : public std::streambuf {
public:
    span_buffer(char* begin, std::size_t size) : begin_(begin), size_(size) {}
    std::size_t written() const noexcept { return count_; }

protected:
    std::streamsize xsputn(const char* data, std::streamsize n) override {
        const auto length = static_cast<std::size_t>(n);
        // Not for nothing: an empty write may pass a null pointer (an empty
        // vector's data()), which memcpy must not get even for 0 bytes.
        if (length != 0 && count_ < size_) std::memcpy(begin_ + count_, data, std::min(length, size_ - count_));
        count_ += length;
        return n;
    }
    int_type overflow(int_type c) override {
        if (count_ < size_) begin_[count_] = traits_type::to_char_type(c);
        ++count_;
        return traits_type::not_eof(c);
    }

private:
    char* begin_;
    std::size_t size_;
    std::size_t count_ = 0;
};

} // namespace detail

// Writes `value` into [out, out + capacity) if it fits; returns the bytes
// it encodes to either way (more than `capacity`: nothing usable was
// written, and the caller needs that much room).
template <class T>
std::size_t encode_measured(const T& value, std::byte* out, std::size_t capacity) {
    if constexpr (codec_of<T>() == codec_kind::raw) {
        if (sizeof(T) <= capacity) std::memcpy(out, &value, sizeof(T));
        return sizeof(T);
    } else {
        static_assert(cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value,
                      "keepsake: this state type is not trivially copyable, so it is committed through cereal, "
                      "which needs a serialize function for it: add template <class Archive> void "
                      "serialize(Archive& a) { a(member, ...); }, and #include <keepsake/cereal.hpp> for the "
                      "standard types its members use (std::string, std::vector, std::map, ...)");
        detail::span_buffer buffer(reinterpret_cast<char*>(out), capacity);
        std::ostream stream(&buffer);
        {
            cereal::BinaryOutputArchive archive(stream);
            archive(value);
        }
        return buffer.written();
    }
}

// The bytes `value` encodes to (for the raw codec, sizeof(T)).
template <class T>
std::size_t encoded_size(const T& value) {
    return encode_measured(value, nullptr, 0);
}

// Writes `value` into [out, out + capacity); returns the bytes used. Throws
// errc::state_too_large, saying the size needed, if it does not fit (the
// bytes in the span are then unspecified).
template <class T>
std::size_t encode(const T& value, std::byte* out, std::size_t capacity) {
    const std::size_t size = encode_measured(value, out, capacity);
    if (size > capacity)
        throw error(errc::state_too_large, "state encodes to " + std::to_string(size) + " bytes, a slot holds " +
                                               std::to_string(capacity));
    return size;
}

namespace detail {

template <class T>
void check_raw_bytes(const std::byte* data, std::size_t size) {
    // A bool that is the whole state is no aggregate, so the probe sees no field in it.
    if constexpr (std::is_same_v<T, bool>)
        if (static_cast<unsigned>(data[0]) > 1)
            throw error(errc::decode_failed, "the bool state holds " + std::to_string(static_cast<unsigned>(data[0])) +
                                                 ", not 0 or 1");
    for (const checked_field& field : raw_layout<T>().checked) {
        const auto byte = static_cast<unsigned>(data[field.offset]);
        if (field.kind == field_kind::boolean && byte > 1)
            throw error(errc::decode_failed, "the bool at byte " + std::to_string(field.offset) + " holds " +
                                                 std::to_string(byte) + ", not 0 or 1");
    }
    if constexpr (declares_check_bytes<state_traits<T>>::value)
        if (!state_traits<T>::check_bytes(data, size))
            throw error(errc::decode_failed, "state_traits<T>::check_bytes refused the stored bytes");
}

} // namespace detail

// Reads a T from bytes that already passed their checksum. Throws
// errc::decode_failed (never anything else) if they do not make a T: a raw
// state of another size or with a bool that is not 0 or 1; a cereal state
// whose bytes run out, hold a length larger than what remains, or are not
// all read. Nothing is allocated for a length before it is checked.
template <class T>
void decode_into(const std::byte* data, std::size_t size, T& out) {
    if constexpr (codec_of<T>() == codec_kind::raw) {
        static_assert(!detail::holds_unfixed_enum<T>(),
                      "keepsake: an enum in a stored state needs a fixed underlying type (enum class E, or enum E "
                      ": int): read back from damaged or forged bytes, a value outside an enum's range is "
                      "undefined behaviour unless every value of the underlying type is valid");
        if (size != sizeof(T))
            throw error(errc::decode_failed, "stored state has " + std::to_string(size) + " bytes, the type has " +
                                                 std::to_string(sizeof(T)));
        detail::check_raw_bytes<T>(data, size);
        std::memcpy(static_cast<void*>(&out), data, sizeof(T));
    } else {
        try {
            detail::bounded_input_archive archive(data, size);
            archive(out);
            if (archive.bytes_left() != 0)
                throw detail::bad_bytes(std::to_string(archive.bytes_left()) + " of the " + std::to_string(size) +
                                        " committed bytes were left unread");
        } catch (const error&) {
            throw;
        } catch (const std::exception& failure) {
            throw error(errc::decode_failed, std::string("stored state does not decode: ") + failure.what());
        }
    }
}

namespace detail {

// Where a cereal state's slots (and a side table's items) start: small,
// so a segment holds thousands of small keys; they grow with the state.
inline constexpr std::uint64_t initial_cereal_capacity = 64;

// The error for committed bytes that pass their checksum (so they are what
// was committed) but do not make a T: the type changed without a new schema
// version, or the bytes were forged. Never "no state": the caller would
// start afresh and its next commit would overwrite what is there.
[[noreturn]] inline void throw_undecodable(const std::string& what, std::uint64_t generation,
                                           std::uint64_t stored_fingerprint, std::uint32_t stored_schema,
                                           std::uint64_t expected_fingerprint, std::uint32_t expected_schema,
                                           const char* why) {
    throw error(errc::decode_failed,
                what + " holds a committed state (generation " + std::to_string(generation) + ", type fingerprint " +
                    fingerprint_text(stored_fingerprint) + ", schema " + std::to_string(stored_schema) +
                    ") whose bytes pass their checksum but do not decode as this program's type (fingerprint " +
                    fingerprint_text(expected_fingerprint) + ", schema " + std::to_string(expected_schema) +
                    "): " + why +
                    ". Nothing was changed, so the program that wrote it can still read it. If the type changed, "
                    "bump its schema_version (state_traits<T> or keeper_options) and give keeper_options::upgrade "
                    "to convert the old bytes");
}

// Runs the user's upgrade hook on `record`: a decode_failed it throws (from
// decode_as<U> inside it, say) is the error above, naming `what` and what is
// stored, with the hook's own message kept as the reason.
template <class T, class Hook>
T run_upgrade(const Hook& hook, const stored_record& record, const std::string& what,
              std::uint64_t expected_fingerprint, std::uint32_t expected_schema) {
    try {
        return hook(record);
    } catch (const error& failure) {
        if (failure.code() != errc::decode_failed) throw;
        throw_undecodable(what, record.generation, record.fingerprint, record.schema_version, expected_fingerprint,
                          expected_schema,
                          ("the upgrade hook could not decode them: " +
                           std::string(failure.what()))
                              .c_str());
    }
}

} // namespace detail

// For upgrade hooks: decodes a record as the old type U that wrote it.
template <class U>
U decode_as(const stored_record& record) {
    static_assert(std::is_default_constructible_v<U>, "decode_as<U> needs a default-constructible U");
    if (record.codec != codec_of<U>())
        throw error(errc::type_mismatch, "record was written with another codec than the requested type uses");
    U value{};
    decode_into(record.data, record.size, value);
    return value;
}

} // namespace keepsake
