// Parsing JSON that comes from outside (safetensors headers, index files, GPTQ configs, --config rules).
// nlohmann's parser itself is iterative, but a value nested 100,000 levels deep overflows the stack in the
// recursive operations done on it afterwards (copies, comparisons, dump): the depth is bounded while parsing.
// Every document lwq reads nests a few levels; kMaxJsonDepth leaves ample room.
#pragma once

#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

#include <string>
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

}  // namespace io
}  // namespace lwq
