// Parsing JSON that comes from outside (safetensors headers, index files, GPTQ configs, --config rules).
// nlohmann's parser itself is iterative, but a value nested 100,000 levels deep overflows the stack in the
// recursive operations done on it afterwards (copies, comparisons, dump): the depth is bounded while parsing.
// Every document lwq reads nests a few levels; kMaxJsonDepth leaves ample room.
#pragma once

#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include <limits>
#include <string>
#include <type_traits>
#include <utility>

namespace lwq {
namespace io {

constexpr int kMaxJsonDepth = 64;

// json::parse of `input` (a string, a stream or an iterator pair) with its nesting bounded; deeper documents fail
// with a c10::Error that starts with `what`. Syntax errors are nlohmann's parse_error, as from json::parse.
template <typename... Input>
nlohmann::json parse_json(const std::string& what, Input&&... input) {
  return nlohmann::json::parse(
      std::forward<Input>(input)...,
      [&what](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        TORCH_CHECK(depth <= kMaxJsonDepth, what, ": JSON nested more than ", kMaxJsonDepth,
                    " levels deep (not a file lwq writes or reads; corrupt?)");
        return true;
      });
}

// `j` as an integer of type T, refused (a c10::Error starting with `what`) unless it is a JSON integer in T's range:
// nlohmann's get<T>() converts a float or an out-of-range number with a plain cast, undefined behaviour past the
// range (found by fuzz/config_rules.cpp: "group_size": 1222...228).
template <typename T>
T json_integer(const nlohmann::json& j, const std::string& what) {
  static_assert(std::is_integral<T>::value && !std::is_same<T, bool>::value, "json_integer: an integer type");
  using Limits = std::numeric_limits<T>;
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    TORCH_CHECK(v <= static_cast<uint64_t>(Limits::max()), what, ": ", v, " is out of range (at most ", Limits::max(),
                ")");
    return static_cast<T>(v);
  }
  TORCH_CHECK(j.is_number_integer(), what, ": expected an integer, got ", j.dump().substr(0, 40));
  const int64_t v = j.get<int64_t>();
  TORCH_CHECK(v >= static_cast<int64_t>(Limits::min()) &&
                  (Limits::max() >= static_cast<T>(std::numeric_limits<int64_t>::max()) ||
                   v <= static_cast<int64_t>(Limits::max())),
              what, ": ", v, " is out of range [", static_cast<int64_t>(Limits::min()), ", ", Limits::max(), "]");
  return static_cast<T>(v);
}

}  // namespace io
}  // namespace lwq
