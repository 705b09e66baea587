// Command-line options of the `gpt` subcommands: `--flag value`, `--flag=value`,
// repeatable `--set key=value`, switches, `-c` for --config and `-h` for
// --help. Every mistake is BadInput naming the option (exit code 2).
#pragma once

#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace gpt {

struct CliOptions {
    std::map<std::string, std::string> values;
    std::vector<std::string> sets;
    std::set<std::string> switches;
    std::vector<std::string> positional;

    bool has(const std::string& k) const { return values.count(k) || switches.count(k); }
    std::string get(const std::string& k, const std::string& def = "") const {
        auto it = values.find(k);
        return it == values.end() ? def : it->second;
    }
};

// Parses args of `gpt <cmd>` against the flags that take a value and the
// switches; more than max_positional plain arguments is an error (unless --help).
CliOptions parse_cli_options(const std::string& cmd, const std::vector<std::string>& args, const std::set<std::string>& with_value,
                             const std::set<std::string>& switches, size_t max_positional = 0);

// An option's integer value in [min, 1e9], or BadInput naming the option.
int parse_int_option(const std::string& flag, const std::string& s, int min);
// An option's positive number, or BadInput naming the option.
double parse_positive_option(const std::string& flag, const std::string& s);

}  // namespace gpt
