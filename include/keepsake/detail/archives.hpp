// keepsake/detail/archives.hpp: the two cereal archives keepsake adds.
//
// bounded_input_archive reads cereal's binary format (what
// BinaryOutputArchive writes) from a span, and never trusts it: every length
// is checked against the bytes left before anything is allocated, a bool
// must be 0 or 1, and reading past the end is an error. A forged record
// therefore costs at most its own size in memory, never gigabytes.
//
// shape_archive runs a type's save() over a default-constructed value and
// hashes what it would write: the kind and size of each scalar, length
// tags, byte runs, class versions. A field added to a cereal state (even
// into padding, where sizeof stays the same) changes the hash, so the type
// fingerprint changes and old bytes are refused up front as another type
// instead of being misread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <typeinfo>

#include <cereal/cereal.hpp>

#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/reflect.hpp"

namespace keepsake::detail {

// Thrown by the bounded archive; codec.hpp turns it into decode_failed.
class bad_bytes : public cereal::Exception {
public:
    using cereal::Exception::Exception;
};

class bounded_input_archive : public cereal::InputArchive<bounded_input_archive, cereal::AllowEmptyClassElision> {
public:
    bounded_input_archive(const std::byte* data, std::size_t size)
        : InputArchive(this), next_(data), left_(size) {}

    void loadBinary(void* out, std::size_t size) {
        if (size > left_)
            throw bad_bytes("the state asks for " + std::to_string(size) + " more bytes but only " +
                            std::to_string(left_) + " remain");
        if (size != 0) std::memcpy(out, next_, size);
        next_ += size;
        left_ -= size;
    }

    // A length read from the bytes: each element takes at least one more
    // byte, so a length above what remains is a lie, refused before the
    // container is sized for it.
    void check_length(std::uint64_t length) const {
        if (length > left_)
            throw bad_bytes("a length of " + std::to_string(length) + " elements where only " +
                            std::to_string(left_) + " bytes remain");
    }

    std::size_t bytes_left() const noexcept { return left_; }

private:
    const std::byte* next_;
    std::size_t left_;
};

inline void check_bools(const void* data, std::size_t count) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < count; ++i)
        if (bytes[i] > 1) throw bad_bytes("a bool holds the byte " + std::to_string(bytes[i]) + ", not 0 or 1");
}

template <class T>
inline std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, T& value) {
    if constexpr (std::is_same_v<T, bool>) {
        unsigned char byte = 0;
        ar.loadBinary(&byte, 1);
        check_bools(&byte, 1);
        value = byte != 0;
    } else {
        ar.loadBinary(std::addressof(value), sizeof(value));
    }
}

template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, cereal::NameValuePair<T>& pair) {
    ar(pair.value);
}

template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, cereal::SizeTag<T>& tag) {
    ar(tag.size);
    ar.check_length(static_cast<std::uint64_t>(tag.size));
}

template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(bounded_input_archive& ar, cereal::BinaryData<T>& run) {
    ar.loadBinary(run.data, static_cast<std::size_t>(run.size));
    using element = std::remove_cv_t<std::remove_all_extents_t<std::remove_pointer_t<std::decay_t<T>>>>;
    if constexpr (std::is_same_v<element, bool>) check_bools(run.data, static_cast<std::size_t>(run.size));
}

// An enum read back from a value outside its range is undefined behaviour
// unless the enum has a fixed underlying type (then every value is one).
template <class T>
inline std::enable_if_t<cereal::common_detail::is_enum<T>::value>
CEREAL_LOAD_MINIMAL_FUNCTION_NAME(const bounded_input_archive&, T&& value,
                                  const typename cereal::common_detail::is_enum<T>::base_type& stored) {
    using enum_type = typename cereal::common_detail::is_enum<T>::type;
    static_assert(!is_unfixed_enum<enum_type>(),
                  "keepsake: an enum in a stored state needs a fixed underlying type (enum class E, or enum E : "
                  "int): read back from damaged or forged bytes, a value outside an enum's range is undefined "
                  "behaviour unless every value of the underlying type is valid");
    value = static_cast<enum_type>(stored);
}

// --- the shape of a type's archive ----------------------------------------
class shape_archive : public cereal::OutputArchive<shape_archive, cereal::AllowEmptyClassElision> {
public:
    shape_archive() : OutputArchive(this) {}

    void add(std::uint64_t word) noexcept { hash_ = mix_words(hash_, word, ++count_, 0x73686170u); }
    void add_name(const char* name) noexcept { add(hash_bytes(name, std::strlen(name))); }
    std::uint64_t hash() const noexcept { return hash_; }

private:
    std::uint64_t hash_ = 0;
    std::uint64_t count_ = 0;
};

template <class T>
inline std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(shape_archive& ar, const T&) {
    ar.add_name(typeid(T).name());
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(shape_archive& ar, const cereal::NameValuePair<T>& pair) {
    // A class version is part of the shape by value: bumping
    // CEREAL_CLASS_VERSION changes the fingerprint.
    if (std::strcmp(pair.name, "cereal_class_version") == 0) {
        if constexpr (std::is_integral_v<std::decay_t<T>>) ar.add(0x76657273u ^ static_cast<std::uint64_t>(pair.value));
    }
    ar(pair.value);
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(shape_archive& ar, const cereal::SizeTag<T>&) {
    ar.add(0x6c656e67u);  // a length; the elements of a default value follow, if any
}

template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(shape_archive& ar, const cereal::BinaryData<T>&) {
    using element = std::remove_cv_t<std::remove_all_extents_t<std::remove_pointer_t<std::decay_t<T>>>>;
    ar.add(0x62797465u);
    ar.add_name(typeid(element).name());
}

// The shape hash of a default T, or 0 when T cannot be shaped (no default
// constructor, or a serialize() written for BinaryOutputArchive only).
template <class T>
std::uint64_t shape_of() {
    if constexpr (std::is_default_constructible_v<T> && cereal::traits::is_output_serializable<T, shape_archive>::value) {
        try {
            const T value{};
            shape_archive archive;
            archive(value);
            return archive.hash() | 1u;
        } catch (...) {
            return 0;  // a save() that refuses a default value: no shape, still a fingerprint
        }
    } else {
        return 0;
    }
}

} // namespace keepsake::detail

namespace cereal::traits::detail {
// Which output archive pairs with ours: cereal asks when it checks that a
// type's save and load functions match.
template <>
struct get_output_from_input<keepsake::detail::bounded_input_archive> {
    using type = keepsake::detail::shape_archive;
};
template <>
struct get_input_from_output<keepsake::detail::shape_archive> {
    using type = keepsake::detail::bounded_input_archive;
};
} // namespace cereal::traits::detail
