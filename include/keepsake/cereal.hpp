// keepsake/cereal.hpp: cereal's support for the standard library's types, in
// one include. A state that is not trivially copyable is committed through
// cereal, which serializes std::string, std::vector, std::map, ... only
// where their cereal/types/ header is included; forgetting one is a long
// template error. Include this instead, beside the state's definition:
//
//   #include <keepsake/cereal.hpp>
//   struct profile {
//       std::string name;
//       std::map<std::string, int> scores;
//       template <class Archive> void serialize(Archive& a) { a(name, scores); }
//   };
//
// Left out: cereal/types/polymorphic.hpp (it needs type registration) and
// boost_variant.hpp (Boost.Variant). It costs about 0.4 s of compile time
// per file, so keepsake/keepsake.hpp does not include it.
#pragma once

#include <cereal/archives/binary.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/atomic.hpp>
#include <cereal/types/base_class.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/forward_list.hpp>
#include <cereal/types/functional.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/queue.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/stack.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/valarray.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>
