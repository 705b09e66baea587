// The kernel variant registry: every kernel family names its variants and its
// tunable launch parameters, once, here.
//
// The config's `kernels:` section is validated against this table
// (`kernels.<family>: <variant>`, `kernels.<family>.<param>: <value>`),
// `gpt kernels list` prints it, the backends read their choices through
// KernelChoices, and `gpt search` enumerates exactly these dimensions.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace gpt {

struct KernelParam {
    std::string name;         // config key kernels.<family>.<name>
    std::vector<int> values;  // the valid values, the default first
    std::string help;
};

struct KernelFamily {
    std::string name;                   // config key kernels.<name>
    std::vector<std::string> backends;  // backends that read it: "cpu", "cuda"
    std::vector<std::string> variants;  // the default first
    std::vector<KernelParam> params;
    // True when every variant and parameter computes the same function (up to
    // float rounding): the search may then judge a change by measured step
    // time plus a correctness check, without retraining.
    bool same_arithmetic = true;
    std::string help;
};

const std::vector<KernelFamily>& kernel_families();
// nullptr when no family has that name.
const KernelFamily* find_kernel_family(const std::string& name);

// The kernel choices of one run: the config's `kernels` map (family ->
// variant, "family.param" -> value) with the registry's defaults behind it.
class KernelChoices {
public:
    KernelChoices() = default;
    explicit KernelChoices(std::map<std::string, std::string> m) : m_(std::move(m)) {}
    // The chosen variant of a family (its default when unset).
    std::string variant(const std::string& family) const;
    // The chosen value of a family's parameter (its default when unset).
    int param(const std::string& family, const std::string& name) const;
    const std::map<std::string, std::string>& map() const { return m_; }

private:
    std::map<std::string, std::string> m_;
};

// The registry as text (`gpt kernels list`): one block per family with its
// variants, parameters, defaults and the backends that read it.
std::string kernel_registry_text();

}  // namespace gpt
