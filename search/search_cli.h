// `gpt search`: the command line of the embedded search (search/README.md).
#pragma once

#include <string>
#include <vector>

namespace gpt::search {

// args: everything after `gpt search`. default_config_yaml: the embedded
// default config, for `gpt search tune` without -c. Returns the exit code;
// throws gpt::Error for bad input (exit 2) and failed runs (exit 1).
int search_main(const std::vector<std::string>& args, const std::string& default_config_yaml);

}  // namespace gpt::search
