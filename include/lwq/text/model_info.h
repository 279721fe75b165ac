// What the files beside a model's archive say about it, for `lwq inspect`: the model family (config.json) and the
// tokenizer (given, or found in the model's or the weights' directory).
#pragma once

#include <string>

#include "lwq/text/tokenizer.h"

namespace lwq {
namespace text {

struct ModelInfo {
  // config.json's model_type (Hugging Face exports), else its architecture (llama2.c exports); "" when neither.
  std::string family;
  std::string config_path;      // the config.json read; "" when none was found
  std::string tokenizer_path;   // the tokenizer read (a file or a directory); "" when none
  std::string tokenizer;        // its describe() line
  SpecialTokens special;        // its BOS/EOS ids
  std::string tokenizer_error;  // a tokenizer found beside the model that could not be read: why
  std::string looked_in;        // the directories searched, for "nothing found" messages
};

// config.json and a tokenizer are looked for in the directory of model_path, then in weights_path (a directory)
// or its directory. tokenizer_path, when given, is read instead of searching, and its errors are thrown; a
// tokenizer found by the search that cannot be read is reported in tokenizer_error, not thrown.
ModelInfo model_info(const std::string& model_path, const std::string& weights_path,
                     const std::string& tokenizer_path);

}  // namespace text
}  // namespace lwq
