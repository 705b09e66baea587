// Shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp): inputs as files,
// and the rule every parser is fuzzed against.
//
// The rule: on any input a parser returns, or throws gpt::Error (the CLI turns
// it into a message and exit code 2 or 1). Any other exception (a YAML
// library error, std::out_of_range, std::bad_alloc from a size read off the
// input) would reach the user as an "internal error", so it is a finding:
// the target aborts with the exception's text. ASan and UBSan report the rest.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "kernels/error.h"

namespace gpt::fuzz {

// One in-memory file per process (memfd), rewritten for each input; its
// /proc/self/fd path is a regular file for InputFile.
inline std::string as_file(const uint8_t* data, size_t size, const char* name = "fuzz-input") {
    static int fd = -1;
    if (fd < 0) fd = ::memfd_create(name, 0);
    if (fd < 0) std::abort();
    if (::ftruncate(fd, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
        const ssize_t w = ::pwrite(fd, data + done, size - done, off_t(done));
        if (w <= 0) std::abort();
        done += size_t(w);
    }
    return "/proc/self/fd/" + std::to_string(fd);
}

template <class F> void expect_only_gpt_errors(F&& f) {
    try {
        f();
    } catch (const gpt::Error&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz finding: an exception other than gpt::Error escaped: %s\n", e.what());
        std::abort();
    }
}

}  // namespace gpt::fuzz
