// keepsake/codec.hpp: how a state becomes bytes in a slot and back.
//
// A trivially copyable T is stored as its bytes (codec_kind::raw); any other T
// goes through cereal's binary archive (codec_kind::cereal_binary), written
// straight into the slot so a commit allocates nothing. state_traits<T> names
// the type and its schema version; specialise it to change either.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <new>
#include <ostream>
#include <streambuf>
#include <string>
#include <type_traits>
#include <typeinfo>

#include <cereal/archives/binary.hpp>

#include "keepsake/detail/checksum.hpp"
#include "keepsake/error.hpp"

namespace keepsake {

enum class codec_kind : std::uint32_t { raw = 1, cereal_binary = 2 };

// Specialise for your state type to set its schema version (bump it when the
// meaning or layout of the bytes changes) or a name that survives renames.
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

template <class T>
constexpr codec_kind codec_of() noexcept {
    return std::is_trivially_copyable_v<T> ? codec_kind::raw : codec_kind::cereal_binary;
}

// Identifies (type name, size, alignment, codec): a keeper refuses bytes
// with another fingerprint unless an upgrade hook takes them.
template <class T>
std::uint64_t type_fingerprint() {
    static const std::uint64_t fingerprint = [] {
        const std::string name = state_traits<T>::type_name();
        return detail::mix_words(detail::hash_bytes(name.data(), name.size()), sizeof(T), alignof(T),
                                 static_cast<std::uint64_t>(codec_of<T>()));
    }();
    return fingerprint;
}

namespace detail {

// A streambuf over a fixed span: writes past its end fail, which makes
// cereal throw instead of growing anything.
class span_buffer : public std::streambuf {
public:
    span_buffer(char* begin, std::size_t size) {
        setp(begin, begin + size);
        setg(begin, begin, begin + size);
    }
    std::size_t written() const { return static_cast<std::size_t>(pptr() - pbase()); }
};

// Counts what an archive would write, to tell the user the size to ask for.
class counting_buffer : public std::streambuf {
public:
    std::size_t count = 0;

protected:
    std::streamsize xsputn(const char*, std::streamsize n) override {
        count += static_cast<std::size_t>(n);
        return n;
    }
    int_type overflow(int_type c) override {
        ++count;
        return traits_type::not_eof(c);
    }
};

template <class T>
std::size_t encoded_size(const T& value) {
    counting_buffer counter;
    std::ostream stream(&counter);
    {
        cereal::BinaryOutputArchive archive(stream);
        archive(value);
    }
    return counter.count;
}

} // namespace detail

// Writes `value` into [out, out + capacity); returns the bytes used. Throws
// errc::state_too_large, saying the size needed, if it does not fit.
template <class T>
std::size_t encode(const T& value, std::byte* out, std::size_t capacity) {
    if constexpr (codec_of<T>() == codec_kind::raw) {
        if (sizeof(T) > capacity)
            throw error(errc::state_too_large, "state of " + std::to_string(sizeof(T)) +
                                                   " bytes does not fit a slot of " + std::to_string(capacity));
        std::memcpy(out, &value, sizeof(T));
        return sizeof(T);
    } else {
        static_assert(cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value,
                      "keepsake: this state type is not trivially copyable, so it is committed through cereal, "
                      "which needs a serialize function for it: add template <class Archive> void "
                      "serialize(Archive& a) { a(member, ...); }, and #include <keepsake/cereal.hpp> for the "
                      "standard types its members use (std::string, std::vector, std::map, ...)");
        detail::span_buffer buffer(reinterpret_cast<char*>(out), capacity);
        try {
            std::ostream stream(&buffer);
            cereal::BinaryOutputArchive archive(stream);
            archive(value);
        } catch (const cereal::Exception&) {
            throw error(errc::state_too_large,
                        "state encodes to " + std::to_string(detail::encoded_size(value)) +
                            " bytes, a slot holds " + std::to_string(capacity));
        }
        return buffer.written();
    }
}

// Reads a T from bytes that already passed their checksum. Throws
// errc::decode_failed (never anything else) if they do not make a T.
template <class T>
void decode_into(const std::byte* data, std::size_t size, T& out) {
    if constexpr (codec_of<T>() == codec_kind::raw) {
        if (size != sizeof(T))
            throw error(errc::decode_failed, "stored state has " + std::to_string(size) + " bytes, the type has " +
                                                 std::to_string(sizeof(T)));
        std::memcpy(static_cast<void*>(&out), data, sizeof(T));
    } else {
        detail::span_buffer buffer(const_cast<char*>(reinterpret_cast<const char*>(data)), size);
        try {
            std::istream stream(&buffer);
            cereal::BinaryInputArchive archive(stream);
            archive(out);
        } catch (const std::exception& failure) {
            throw error(errc::decode_failed, std::string("stored state does not decode: ") + failure.what());
        }
    }
}

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
