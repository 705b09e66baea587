#include "train/cli_args.h"

#include "kernels/error.h"

namespace gpt {

CliOptions parse_cli_options(const std::string& cmd, const std::vector<std::string>& args, const std::set<std::string>& with_value,
                             const std::set<std::string>& switches, size_t max_positional) {
    const std::map<std::string, std::string> aliases = {{"-c", "--config"}, {"-h", "--help"}};
    CliOptions o;
    for (size_t i = 0; i < args.size(); i++) {
        std::string a = args[i], val;
        bool has_val = false;
        if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
            val = a.substr(a.find('=') + 1);
            a = a.substr(0, a.find('='));
            has_val = true;
        }
        if (aliases.count(a)) a = aliases.at(a);
        if (a == "--help") { o.switches.insert(a); continue; }
        if (a.size() > 1 && a[0] == '-') {
            if (!with_value.count(a) && !switches.count(a)) {
                std::string valid;
                for (const auto& v : with_value) valid += " " + v;
                for (const auto& v : switches) valid += " " + v;
                bad_input("unknown option '" + args[i] + "' for 'gpt " + cmd + "' (valid:" + valid + " --help)");
            }
            if (switches.count(a)) {
                if (has_val) bad_input("option '" + a + "' takes no value");
                o.switches.insert(a);
                continue;
            }
            if (!has_val) {
                if (i + 1 >= args.size()) bad_input("option '" + a + "' needs a value");
                val = args[++i];
            }
            if (a == "--set") o.sets.push_back(val);
            else o.values[a] = val;
            continue;
        }
        o.positional.push_back(a);
    }
    if (o.positional.size() > max_positional && !o.switches.count("--help"))
        bad_input("unexpected argument '" + o.positional[max_positional] + "' for 'gpt " + cmd + "'");
    return o;
}

int parse_int_option(const std::string& flag, const std::string& s, int min) {
    try {
        size_t pos;
        long v = std::stol(s, &pos);
        if (pos == s.size() && v >= min && v <= 1'000'000'000) return static_cast<int>(v);
    } catch (...) {
    }
    bad_input("option '" + flag + "': expected an integer >= " + std::to_string(min) + ", got '" + s + "'");
}

double parse_positive_option(const std::string& flag, const std::string& s) {
    try {
        size_t pos;
        double v = std::stod(s, &pos);
        if (pos == s.size() && v > 0) return v;
    } catch (...) {
    }
    bad_input("option '" + flag + "': expected a positive number, got '" + s + "'");
}

}  // namespace gpt
