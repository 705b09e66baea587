// Byte ranges of the work pending on the CUDA backend's side stream
// (kernels.matmul.dw_stream; kernels/cuda/common.cuh), and the one test that
// decides whether main-stream work must wait for it. Plain C++, so that the
// CPU suite tests it too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace gpt::cuda {

// [begin, end) of device memory, and whether the work writes it.
struct SideRange {
    uintptr_t begin, end;
    bool written;
};

// The range of `bytes` bytes at p; empty (touching nothing) when p is null.
inline SideRange side_range(const void* p, size_t bytes, bool written) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(p);
    return p ? SideRange{b, b + bytes, written} : SideRange{b, b, written};
}

// True when work touching `mine` would race work touching `pending`: the two
// share a byte that at least one of them writes. Reads never race reads.
inline bool ranges_race(std::initializer_list<SideRange> mine, const std::vector<SideRange>& pending) {
    for (const auto& m : mine)
        for (const auto& s : pending)
            if ((m.written || s.written) && m.begin < s.end && s.begin < m.end) return true;
    return false;
}

}  // namespace gpt::cuda
