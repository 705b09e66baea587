// The kernel variant registry: every kernel family names its variants and its
// tunable launch parameters, once, here.
//
// The config's `kernels:` section is validated against this table
// (`kernels.<family>: <variant>`, `kernels.<family>.<param>: <value>`),
// `gpt kernels list` prints it, the backends read their choices through
// KernelChoices, and `gpt search` enumerates exactly these dimensions.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace gpt {

class KernelChoices;

// One problem for a family's kernels (kernels/lab.h): an op of the family and
// its sizes, e.g. {"backward", {{"B", 3}, {"T", 77}, {"NH", 4}, {"HD", 64}}}.
struct KernelProblem {
    std::string op;
    std::vector<std::pair<std::string, long>> dims;
    long dim(const std::string& name) const;  // 0 when absent
    std::string text() const;                 // "backward B=3 T=77 NH=4 HD=64"
};

// What a device offers, for can_run: the backend's name, its compute
// capability (90 for sm_90; 0 on the CPU) and opt-in shared memory per block.
struct DeviceCaps {
    std::string backend;
    int sm = 0;
    size_t smem_per_block = 0;
};

struct KernelParam {
    std::string name;         // config key kernels.<family>.<name>
    std::vector<int> values;  // the valid values, the default first
    std::string help;
    std::vector<std::string> variants = {};  // the variants that read it; empty = all
    std::vector<std::string> ops = {};       // the lab ops (kernels/lab.h) it changes; empty = all
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
    // "" when the variant and launch parameters of `choices` can run the
    // problem on the device, else why not. Empty: every combination can (a
    // kernel may still refuse a problem at run time with BadInput, e.g. a tile
    // over the device's shared memory; the lab reports that as cannot-run too).
    std::function<std::string(const KernelProblem&, const KernelChoices&, const DeviceCaps&)> can_run = {};
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
