// The index logic of the embedding backward's dwte sum (kernels/cuda/encoder.cu),
// in plain C++ that compiles for the host too, so that a CPU test
// (tests/test_kernels_cpu.cpp, EncoderRunsSchedule) runs this same logic on
// token streams with frequent tokens and checks the schedule: every token's
// positions summed exactly once, in a fixed order, with each dwte row
// written by one block.
//
// The positions P = B*T are sorted by token (keys ascending, positions
// increasing within a token). The sorted array is cut into chunks of S
// entries; chunk c = [c*S, min(P, (c+1)*S)). Within a chunk, a maximal run of
// equal keys [a, b) is
//   whole     when it neither continues from the previous chunk nor into the
//             next: the chunk's block adds its sum into dwte directly;
//   crossing  otherwise: the block writes its sum to partial slot
//             2c + (a == chunk start ? 0 : 1) (the chunk's first run, or its
//             last run starting inside the chunk: at most one of each).
// A crossing run is owned by the chunk holding its first entry (the owner's
// slot is its last run's: 0 when the run starts at the chunk start, else 1);
// the owner adds, in chunk order, its own partial and slot 0 of every later
// chunk the run covers, and adds the total into dwte. So a token that makes
// up 4% of a 64K-token batch (2600 positions) costs 41 partials of 64 rows
// each instead of one block's serial walk over 2600 rows.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define GPT_HOST_DEVICE __host__ __device__
#else
#define GPT_HOST_DEVICE
#endif

namespace gpt::cuda::encoder_runs {

struct Chunk {
    int begin, end;  // sorted indices [begin, end)
};

GPT_HOST_DEVICE inline int num_chunks(int P, int S) { return (P + S - 1) / S; }

GPT_HOST_DEVICE inline Chunk chunk(int c, int S, int P) {
    const int b = c * S;
    return {b, b + S < P ? b + S : P};
}

// Run [a, b) of chunk ch (keys[a..b) equal): does it continue from the
// previous chunk, or into the next one?
GPT_HOST_DEVICE inline bool continues_before(const uint32_t* keys, int a, Chunk ch) {
    return a == ch.begin && a > 0 && keys[a - 1] == keys[a];
}
GPT_HOST_DEVICE inline bool continues_after(const uint32_t* keys, int b, Chunk ch, int P) {
    return b == ch.end && b < P && keys[b] == keys[b - 1];
}

// The partial slot of a crossing run starting at a in chunk c.
GPT_HOST_DEVICE inline int partial_slot(int c, int a, Chunk ch) { return 2 * c + (a == ch.begin ? 0 : 1); }

// First index in [lo, P) whose key differs from key (keys ascending from lo on, keys[lo - 1] == key).
GPT_HOST_DEVICE inline int run_end(const uint32_t* keys, int lo, int P, uint32_t key) {
    int hi = P;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (keys[mid] == key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// Stage 2: does chunk c own a crossing run (its last run continues into the
// next chunk and starts inside c)? If so: its token, the slot of its own
// partial, and the last chunk the run covers.
struct Owned {
    bool owns;
    uint32_t key;
    int own_slot, last_chunk;
};

GPT_HOST_DEVICE inline Owned owned_run(const uint32_t* keys, int c, int S, int P) {
    const Chunk ch = chunk(c, S, P);
    const uint32_t key = keys[ch.end - 1];
    if (!(ch.end < P && keys[ch.end] == key)) return {false, 0, 0, 0};   // the last run ends in this chunk
    if (ch.begin > 0 && keys[ch.begin - 1] == key) return {false, 0, 0, 0};  // started in an earlier chunk
    const int own_slot = 2 * c + (keys[ch.begin] == key ? 0 : 1);
    const int b = run_end(keys, ch.end, P, key);
    return {true, key, own_slot, (b - 1) / S};
}

}  // namespace gpt::cuda::encoder_runs

#undef GPT_HOST_DEVICE
