// Reader for the oracle state files written by tools/make_oracle.py.
//
// Format (little-endian), version 1:
//     magic    8 bytes  "GPTORACL"
//     version  uint32   1
//     count    uint32   number of records
//     then `count` records, each:
//         name_len uint32, name (utf-8, name_len bytes)
//         dtype    uint32   0 = float32, 1 = int32, 2 = float64
//         ndim     uint32
//         dims     int64[ndim]
//         data     prod(dims) values of dtype, row-major
// Floating records land in OracleTensor::data (as double), int32 records in
// OracleTensor::ints. Any malformed file throws std::runtime_error naming the
// file and what was wrong, so a test fails with a message instead of garbage.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace gpt::test {

// The reader copies raw bytes into host integers and floats.
static_assert(std::endian::native == std::endian::little, "oracle files are little-endian");

struct OracleTensor {
    std::vector<int64_t> shape;
    std::vector<double> data;   // float32 and float64 records
    std::vector<int32_t> ints;  // int32 records
};

constexpr char kOracleMagic[8] = {'G', 'P', 'T', 'O', 'R', 'A', 'C', 'L'};
constexpr uint32_t kOracleVersion = 1;

inline std::map<std::string, OracleTensor> read_oracle(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("oracle file '" + path + "': cannot open");
    auto fail = [&](const std::string& why) { throw std::runtime_error("oracle file '" + path + "': " + why); };
    auto read = [&](void* dst, size_t bytes, const char* what) {
        in.read(static_cast<char*>(dst), static_cast<std::streamsize>(bytes));
        if (static_cast<size_t>(in.gcount()) != bytes) fail(std::string("truncated while reading ") + what);
    };
    auto u32 = [&](const char* what) {
        uint32_t v;
        read(&v, 4, what);
        return v;
    };

    char magic[8];
    read(magic, 8, "the magic");
    if (std::memcmp(magic, kOracleMagic, 8) != 0) fail("bad magic (not a GPTORACL state file)");
    const uint32_t version = u32("the version");
    if (version != kOracleVersion)
        fail("version " + std::to_string(version) + ", this reader knows version " + std::to_string(kOracleVersion));
    const uint32_t count = u32("the record count");

    std::map<std::string, OracleTensor> out;
    for (uint32_t r = 0; r < count; r++) {
        const std::string where = "record " + std::to_string(r);
        const uint32_t name_len = u32("a record name length");
        if (name_len == 0 || name_len > 4096) fail(where + ": implausible name length " + std::to_string(name_len));
        std::string name(name_len, '\0');
        read(name.data(), name_len, "a record name");
        const uint32_t dtype = u32("a record dtype");
        if (dtype > 2) fail("record '" + name + "': unknown dtype " + std::to_string(dtype));
        const uint32_t ndim = u32("a record rank");
        if (ndim > 8) fail("record '" + name + "': implausible rank " + std::to_string(ndim));
        OracleTensor t;
        t.shape.resize(ndim);
        if (ndim) read(t.shape.data(), ndim * sizeof(int64_t), "a record shape");
        size_t numel = 1;
        for (int64_t d : t.shape) {
            // Oracle files are small; the bound rejects garbage before allocating.
            if (d < 0 || d > (int64_t(1) << 24)) fail("record '" + name + "': bad dimension " + std::to_string(d));
            numel *= size_t(d);
        }
        if (numel > (size_t(1) << 26)) fail("record '" + name + "': implausible size " + std::to_string(numel));
        if (dtype == 1) {
            t.ints.resize(numel);
            read(t.ints.data(), numel * 4, "int32 data");
        } else if (dtype == 0) {
            std::vector<float> f(numel);
            read(f.data(), numel * 4, "float32 data");
            t.data.assign(f.begin(), f.end());
        } else {
            t.data.resize(numel);
            read(t.data.data(), numel * 8, "float64 data");
        }
        if (!out.emplace(name, std::move(t)).second) fail("duplicate record '" + name + "'");
    }
    if (in.peek() != std::ifstream::traits_type::eof()) fail("trailing bytes after " + std::to_string(count) + " records");
    return out;
}

}  // namespace gpt::test
