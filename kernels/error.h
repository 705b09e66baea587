// Errors that cross module boundaries.
//
// Anything a user can get wrong (config, shard, checkpoint, flag) throws
// gpt::Error with kind BadInput; the CLI maps it to exit code 2. A run that
// fails for other reasons (I/O, out of memory, a diverged loss) is RunFailed,
// exit code 1. Nothing below the CLI calls exit(): the search runs trials in
// the same code and must be able to recover.
#pragma once

#include <stdexcept>
#include <string>

namespace gpt {

enum class ErrorKind { BadInput, RunFailed, OutOfMemory };

struct Error : std::runtime_error {
    ErrorKind kind;
    Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

[[noreturn]] inline void bad_input(const std::string& msg) { throw Error(ErrorKind::BadInput, msg); }
[[noreturn]] inline void run_failed(const std::string& msg) { throw Error(ErrorKind::RunFailed, msg); }

// Exit code for an error kind: 2 for bad input, including a model or batch
// too big for the device's memory (the user's choice to change); 1 otherwise.
inline int exit_code(ErrorKind k) { return k == ErrorKind::RunFailed ? 1 : 2; }

}  // namespace gpt
