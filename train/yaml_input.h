// User YAML in, bounded: the one way config files, --set values and search
// spaces are parsed, around the failures of Debian 12's yaml-cpp 0.7 that the
// config fuzzer (tests/fuzz/fuzz_config.cpp) found.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

namespace gpt {

// The first YAML document of text, and whether anything follows it.
// yaml-cpp 0.7's LoadAll never returns when a document ends on a token no rule
// consumes (a stray ',' after a flow collection, say): each pass yields one
// more empty document without reading on, and allocates until the machine runs
// out. This asks the parser for the first document and then for at most one
// more, so it always returns. `has_second`: a second document ('---') or other
// content follows the first, starting at `second` (a null mark when the
// parser gave none); the caller says what that means for its file. YAML::Exception passes through;
// refuse_yaml_cpp_hang's errors (BadInput) come first.
struct YamlDocument {
    YAML::Node root;
    bool has_second = false;
    YAML::Mark second = YAML::Mark::null_mark();
};
YamlDocument load_yaml_document(const std::string& text, const std::string& origin);

// The shapes of that endless parse that can be named precisely: a document
// that starts with a comma, or whose root is a flow collection or a quoted
// scalar followed by one (",", "{},", "[1] ,", "'x',", also after an anchor, a
// tag, comments or a '---'). Throws BadInput naming origin:line:column.
// load_yaml_document calls it; anything it misses is still bounded there.
void refuse_yaml_cpp_hang(const std::string& text, const std::string& origin);

}  // namespace gpt
