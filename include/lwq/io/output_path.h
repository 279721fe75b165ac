// Checks of an output path, made before any work: a run that takes hours must not fail at its final rename, and
// an output must never replace one of the files the run reads. Files are compared by identity (device and inode,
// following links), so another spelling of a path, a symbolic link or a hard link to an input is caught, and a
// directory input stands for every file in it (shards, index, config, tokenizer).
#pragma once

#include <string>
#include <vector>

namespace lwq {
namespace io {

// One input of a command: its option (for messages, e.g. "--weights") and its path (a file or a directory).
struct NamedInput {
  std::string option;
  std::string path;
};

// Refuses (c10::Error naming `command`, the output and the input) an output file `out` that
//  - is empty, an existing directory, or in a folder that does not exist, is not a directory or is not writable;
//  - is (by identity) any file of `inputs`; empty input paths are skipped.
// `option` names the output in messages ("--out", "--report"). Temporaries of the output that a killed earlier
// write left are removed (io::remove_stale_temporaries).
void check_output_file(const std::string& command, const std::string& option, const std::string& out,
                       const std::vector<NamedInput>& inputs);

// The same for an output directory that will receive `files` (names inside it): the directory may exist (then
// each file that would be replaced is checked against the inputs) or be created in an existing parent.
void check_output_dir(const std::string& command, const std::string& option, const std::string& dir,
                      const std::vector<std::string>& files, const std::vector<NamedInput>& inputs);

// True when both paths exist and are the same file (device and inode, links followed).
bool same_file(const std::string& a, const std::string& b);

}  // namespace io
}  // namespace lwq
