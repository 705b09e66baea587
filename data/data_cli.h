// `gpt data`: write and inspect token shards, and describe the synthetic chain.
//
//   gpt data write-shard OUT [--input FILE] [--vocab N]
//   gpt data info FILE... [--vocab N]
//   gpt data synthetic-info [--order K --vocab V --sharpness S --seed N --seq-len T]
#pragma once

#include <string>
#include <vector>

namespace gpt {

// Runs `gpt data` with the arguments after `data`. Returns the exit code: 0 ok,
// 2 bad usage or bad input (message on stderr after "gpt data: error: "), 1 other failures.
int data_main(const std::vector<std::string>& args);

}  // namespace gpt
