// keepsake/detail/reflect.hpp: what the raw codec can see of a trivially
// copyable aggregate's fields, without help from the user.
//
// A probe object converts to any field type; initializing T{probe, probe,
// ...} with as many probes as the aggregate accepts visits its fields in
// order (the elements of a C array one by one, through brace elision), and
// each conversion records the field's type. From the types follow the
// offsets (a struct lays its fields out in order, each at its alignment);
// if the computed size differs from sizeof(T) (an empty base, bit-fields,
// more fields than the probe counts), the layout is "opaque" and nothing is
// claimed about it. Used for two things:
//   - the type fingerprint of a raw state: a field added into padding changes
//     the field list even when sizeof(T) stays the same;
//   - checking raw bytes before they become a T: a bool must hold 0 or 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "keepsake/detail/checksum.hpp"

// Probing initializes aggregates with fewer braces and initializers than
// they have fields, on purpose.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wmissing-field-initializers"
#pragma clang diagnostic ignored "-Wmissing-braces"
#elif defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wmissing-braces"
#endif

namespace keepsake::detail {

// Fields of one aggregate level the probe counts at most. A C array member
// counts each element: `char name[200]` alone passes it (the type is then
// opaque: see README "What the codecs check").
inline constexpr std::size_t max_probed_fields = 128;

enum class field_kind : std::uint8_t { plain, boolean, enumeration };

// One scalar the raw codec will check, at its offset in the state.
struct checked_field {
    std::size_t offset = 0;
    field_kind kind = field_kind::plain;
};

// Enums whose valid values are every value of their underlying type: since
// C++17 only those accept list-initialization from that type.
template <class E, class = void>
struct has_fixed_underlying_type : std::false_type {};
template <class E>
struct has_fixed_underlying_type<E, std::void_t<decltype(E{std::underlying_type_t<E>{}})>> : std::true_type {};

template <class E>
constexpr bool is_unfixed_enum() {
    if constexpr (std::is_enum_v<E>) return !has_fixed_underlying_type<E>::value;
    else return false;
}

// What a probe can stand in for: a type it can also produce (U{}).
template <class U>
constexpr bool probe_target() {
    return std::is_default_constructible_v<U> && !std::is_reference_v<U>;
}

struct counting_probe {
    template <class U, class = std::enable_if_t<probe_target<U>()>>
    // Named in unevaluated contexts only; defined all the same, as clang
    // warns about an undefined inline function a field's own converting
    // constructor template refers to (std::optional's does).
    constexpr operator U() const noexcept { return U{}; }
};

template <class T, class Probe, std::size_t... I>
constexpr auto braces_accept(std::index_sequence<I...>) -> decltype(T{(static_cast<void>(I), Probe{})...}, true) {
    return true;
}
template <class T, class Probe>
constexpr bool braces_accept(...) {
    return false;
}

template <class T, class Probe, std::size_t N>
constexpr bool accepts() {
    return braces_accept<T, Probe>(std::make_index_sequence<N>{});
}

// The largest N for which T{probe x N} compiles: the aggregate's field
// count, C array elements flattened; max_probed_fields + 1 means "more".
template <class T, class Probe = counting_probe, std::size_t N = 0>
constexpr std::size_t probed_field_count() {
    if constexpr (N > max_probed_fields) return N;
    else if constexpr (!accepts<T, Probe, N + 1>()) return N;
    else return probed_field_count<T, Probe, N + 1>();
}

template <class T>
constexpr bool probe_applies() {
    return std::is_aggregate_v<T> && std::is_trivially_copyable_v<T> && !std::is_array_v<T> &&
           probed_field_count<T>() <= max_probed_fields;
}

// --- compile time: does T hold an enum whose bad values are undefined? --
template <class U>
constexpr bool holds_unfixed_enum();

struct fixed_enum_probe {
    template <class U, class = std::enable_if_t<probe_target<U>() && !holds_unfixed_enum<U>()>>
    constexpr operator U() const noexcept { return U{}; }
};

template <class U>
constexpr bool holds_unfixed_enum() {
    if constexpr (is_unfixed_enum<U>()) {
        return true;
    } else if constexpr (std::is_array_v<U>) {
        return holds_unfixed_enum<std::remove_all_extents_t<U>>();
    } else if constexpr (std::is_class_v<U> && std::is_aggregate_v<U> && std::is_trivially_copyable_v<U>) {
        constexpr std::size_t count = probed_field_count<U>();
        if constexpr (count == 0 || count > max_probed_fields) return false;
        else return !accepts<U, fixed_enum_probe, count>();
    } else {
        return false;
    }
}

// --- run time: the fields, their offsets, the ones to check ------------
struct probed_layout {
    bool known = false;                  // the offsets below are the real ones
    std::vector<checked_field> checked;  // bools and enums, nested ones included
    std::vector<std::uint64_t> words;    // (type, size, offset) of each field, for the fingerprint
};

template <class T>
probed_layout probe_layout();

// Records each field's type as the aggregate initialization meets it.
struct recorded_field {
    const std::type_info* type;
    std::size_t size;
    std::size_t align;
    field_kind kind;
    probed_layout (*nested)();  // the field's own fields, for a nested aggregate
};

struct recording_probe {
    std::vector<recorded_field>* out;

    template <class U, class = std::enable_if_t<probe_target<U>()>>
    operator U() const {
        out->push_back(recorded_field{&typeid(U), sizeof(U), alignof(U), kind_of<U>(), nested_of<U>()});
        return U{};
    }

    template <class U>
    static constexpr field_kind kind_of() {
        if constexpr (std::is_same_v<std::remove_cv_t<U>, bool>) return field_kind::boolean;
        else if constexpr (std::is_enum_v<U>) return field_kind::enumeration;
        else return field_kind::plain;
    }

    template <class U>
    static constexpr probed_layout (*nested_of())() {
        if constexpr (std::is_class_v<U> && probe_applies<U>()) return &probe_layout<U>;
        else return nullptr;
    }
};

template <class T, std::size_t... I>
std::vector<recorded_field> record_fields(std::index_sequence<I...>) {
    std::vector<recorded_field> fields;
    fields.reserve(sizeof...(I));
    const T made{(static_cast<void>(I), recording_probe{&fields})...};
    static_cast<void>(made);
    return fields;
}

inline std::size_t align_up(std::size_t value, std::size_t align) noexcept {
    return (value + align - 1) / align * align;
}

template <class T>
probed_layout probe_layout() {
    probed_layout layout;
    if constexpr (probe_applies<T>()) {
        const std::vector<recorded_field> fields =
            record_fields<T>(std::make_index_sequence<probed_field_count<T>()>{});
        std::size_t offset = 0;
        for (const recorded_field& field : fields) {
            offset = align_up(offset, field.align);
            const char* name = field.type->name();  // mangled: the same for g++ and clang++
            layout.words.push_back(hash_bytes(name, std::strlen(name)));
            layout.words.push_back((std::uint64_t{field.size} << 32) | offset);
            if (field.kind != field_kind::plain) {
                layout.checked.push_back(checked_field{offset, field.kind});
            } else if (field.nested != nullptr) {
                const probed_layout inner = field.nested();
                if (!inner.known) return probed_layout{};
                for (const checked_field& each : inner.checked)
                    layout.checked.push_back(checked_field{offset + each.offset, each.kind});
            }
            offset += field.size;
        }
        layout.known = !fields.empty() && align_up(offset, alignof(T)) == sizeof(T);
        if (!layout.known) return probed_layout{};
    }
    return layout;
}

} // namespace keepsake::detail

#if defined(__clang__)
#pragma clang diagnostic pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
