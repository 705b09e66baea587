// safetensors reading and writing: byte layout, every dtype's round trip,
// files built by hand (not by our writer), every validation error, the
// half-precision conversion against the compiler's _Float16, streaming and
// atomic replacement.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "kernels/convert.h"
#include "kernels/error.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

// A file as the format defines it, built byte by byte: u64 length, header, data.
std::string st_bytes(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; i++) out[size_t(i)] = char((uint64_t(header.size()) >> (8 * i)) & 0xff);
    return out + header + data;
}

std::string floats(std::initializer_list<float> v) {
    return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * 4);
}

// The BadInput message of opening `bytes` as a safetensors file ("" when it opens).
std::string open_error(const TempDir& d, const std::string& bytes) {
    const std::string p = d.file("x.safetensors");
    test::write_file(p, bytes);
    try {
        SafetensorsReader r(p);
        return "";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput) << e.what();
        EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "the error names the file: " << e.what();
        return e.what();
    }
}

}  // namespace

TEST(Safetensors, ReadsAHandBuiltFile) {
    TempDir d;
    // Two tensors listed out of data order, metadata, and header padding spaces.
    const std::string header =
        R"({"b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]},"__metadata__":{"format":"pt","note":"h\u00e9"},)"
        R"("a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}}   )";
    const uint16_t bf[3] = {0x3f80, 0xc000, 0x3e80};  // 1, -2, 0.25
    const std::string data = floats({1.5f, -3.25f}) + std::string(reinterpret_cast<const char*>(bf), 6);
    const std::string p = d.file("m.safetensors");
    test::write_file(p, st_bytes(header, data));
    SafetensorsReader r(p);
    ASSERT_EQ(r.tensors().size(), 2u);
    EXPECT_EQ(r.tensors()[0].name, "a");  // data order
    EXPECT_EQ(r.info("a").shape, (std::vector<int64_t>{2, 1}));
    EXPECT_EQ(r.info("b").dtype, StDType::BF16);
    EXPECT_EQ(r.read_f32("a"), (std::vector<float>{1.5f, -3.25f}));
    EXPECT_EQ(r.read_f32("b", {3}), (std::vector<float>{1.0f, -2.0f, 0.25f}));
    EXPECT_EQ(r.metadata().at("format"), "pt");
    EXPECT_EQ(r.metadata().at("note"), "h\xc3\xa9");
    EXPECT_TRUE(r.has("a"));
    EXPECT_FALSE(r.has("c"));
    EXPECT_THROW(r.read_f32("a", {2}), Error);  // wrong expected shape
    try {
        r.info("c");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no tensor named 'c'"), std::string::npos) << e.what();
    }
}

TEST(Safetensors, WriterLayoutAndRoundTripOfEveryDtype) {
    TempDir d;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-4, 4);
    std::vector<float> f32(5 * 7);
    for (auto& x : f32) x = u(rng);
    std::vector<double> f64 = {1e-300, -2.5, 3.0 / 7};
    std::vector<int64_t> i64 = {-1, 1LL << 40, 7};
    std::vector<uint8_t> u8 = {0, 255, 17};
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    w.add("w.f32", StDType::F32, {5, 7}, f32.data());
    w.add_from_f32("w.bf16", StDType::BF16, {5, 7}, f32.data());
    w.add_from_f32("w.f16", StDType::F16, {35}, f32.data());
    w.add("d", StDType::F64, {3}, f64.data());
    w.add("i", StDType::I64, {3}, i64.data());
    w.add("u", StDType::U8, {3}, u8.data());
    w.add("empty", StDType::F32, {0, 4}, static_cast<const void*>(nullptr));
    w.add("scalar", StDType::F32, {}, f32.data());
    const std::string p = d.file("out.safetensors");
    w.write(p);

    // The bytes: an 8-byte little-endian length, a JSON header starting with
    // '{' whose end keeps the data 8-byte aligned, then the data in add order.
    const std::string bytes = test::read_file(p);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | static_cast<unsigned char>(bytes[size_t(i)]);
    EXPECT_EQ(n % 8, 0u);
    EXPECT_EQ(bytes[8], '{');
    EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, f32.data(), f32.size() * 4), 0) << "the first tensor's bytes start the buffer";
    EXPECT_NE(bytes.find(R"("w.f32":{"dtype":"F32","shape":[5,7],"data_offsets":[0,140]})"), std::string::npos);
    EXPECT_NE(bytes.find(R"("__metadata__":{"format":"pt"})"), std::string::npos);

    SafetensorsReader r(p);
    EXPECT_EQ(r.read_f32("w.f32"), f32);
    const auto bf = r.read_f32("w.bf16"), h = r.read_f32("w.f16");
    for (size_t i = 0; i < f32.size(); i++) {
        EXPECT_EQ(bf[i], float(bf16_to_double(double_to_bf16(f32[i]))));
        EXPECT_EQ(h[i], f16_to_float(float_to_f16(f32[i])));
        EXPECT_NEAR(h[i], f32[i], 4 * 0x1p-11);
    }
    const auto dd = r.read_f32("d");
    EXPECT_EQ(dd[1], -2.5f);
    EXPECT_EQ(dd[2], float(3.0 / 7));
    std::vector<char> raw = r.read_raw("i");
    ASSERT_EQ(raw.size(), 24u);
    EXPECT_EQ(std::memcmp(raw.data(), i64.data(), 24), 0);
    EXPECT_EQ(r.read_raw("u"), (std::vector<char>{0, char(255), 17}));
    EXPECT_TRUE(r.read_f32("empty").empty());
    EXPECT_EQ(r.info("empty").shape, (std::vector<int64_t>{0, 4}));
    EXPECT_EQ(r.read_f32("scalar"), std::vector<float>{f32[0]});
    EXPECT_THROW(r.read_f32("i"), Error);  // integers are not read as floats
    EXPECT_EQ(r.metadata().size(), 1u);
}

TEST(Safetensors, StreamsTensorsLargerThanOneChunkInOrder) {
    // A fill callback is asked for consecutive element ranges; a 6M-element
    // tensor crosses the writer's 4 MiB chunks, and the values tell which
    // element each one is.
    TempDir d;
    const size_t n = 6'000'000;
    size_t calls = 0, next = 0;
    SafetensorsWriter w;
    w.add("big", StDType::F32, {int64_t(n)}, [&](void* dst, size_t first, size_t count) {
        EXPECT_EQ(first, next);
        next = first + count;
        calls++;
        float* f = static_cast<float*>(dst);
        for (size_t i = 0; i < count; i++) f[i] = float(first + i);
    });
    w.write(d.file("big.safetensors"));
    EXPECT_EQ(next, n);
    EXPECT_GT(calls, 1u);
    SafetensorsReader r(d.file("big.safetensors"));
    const auto v = r.read_f32("big");
    ASSERT_EQ(v.size(), n);
    for (size_t i = 0; i < n; i += 999'983) EXPECT_EQ(v[i], float(i));
    EXPECT_EQ(v[n - 1], float(n - 1));
}

TEST(Safetensors, WriteIsAtomic) {
    TempDir d;
    const std::string p = d.file("m.safetensors");
    const std::vector<float> a = {1, 2, 3};
    SafetensorsWriter w1;
    w1.add("a", StDType::F32, {3}, a.data());
    w1.write(p);
    const std::string before = test::read_file(p);
    // A writer that fails half way (a fill that throws) leaves the old file and no temp file.
    SafetensorsWriter w2;
    w2.add("a", StDType::F32, {3}, a.data());
    w2.add("b", StDType::F32, {3}, [](void*, size_t, size_t) { throw std::runtime_error("source failed"); });
    EXPECT_THROW(w2.write(p), std::runtime_error);
    EXPECT_EQ(test::read_file(p), before);
    size_t files = 0;
    for (const auto& e : std::filesystem::directory_iterator(d.path)) files += e.path().filename() != "m.safetensors" ? 1 : 0;
    EXPECT_EQ(files, 0u) << "no temporary file is left behind";
    // Names are checked when added.
    SafetensorsWriter w3;
    w3.add("a", StDType::F32, {3}, a.data());
    EXPECT_THROW(w3.add("a", StDType::F32, {3}, a.data()), Error);
    EXPECT_THROW(w3.add("__metadata__", StDType::F32, {3}, a.data()), Error);
    EXPECT_THROW(w3.add("", StDType::F32, {3}, a.data()), Error);
    EXPECT_THROW(w3.add_from_f32("x", StDType::I32, {3}, a.data()), Error);
    EXPECT_THROW(w3.write(d.file("no/such/dir/m.safetensors")), Error);
}

TEST(Safetensors, RejectsMalformedFilesNamingTheProblem) {
    TempDir d;
    const std::string t8 = floats({1, 2});
    auto hdr = [](const std::string& body) { return "{" + body + "}"; };
    struct Case {
        std::string bytes, expect;
    };
    const std::vector<Case> cases = {
        {"1234", "truncated"},
        {std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", "implausible"},
        {st_bytes("{}", "").substr(0, 9), "runs past the end"},
        {st_bytes("[1,2]", ""), "does not start with '{'"},
        {st_bytes("{\"a\":", ""), "bad JSON header"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), t8),
         "duplicate key \"a\""},
        {st_bytes(hdr(R"("a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]})"), t8), "unknown dtype 'F31'"},
        {st_bytes(hdr(R"("a":{"shape":[2],"data_offsets":[0,8]})"), t8), "tensor 'a': no dtype"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), t8), "non-negative integers"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"), t8), "non-negative integers"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0]})"), t8), "data_offsets must be [begin, end]"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), t8), "end before they begin"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), t8), "needs 12"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), t8), "overflows"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), t8),
         "tensor 'b' overlaps tensor 'a'"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), t8), "a hole in the data buffer: bytes [0, 4)"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), t8), "trailing bytes"},
        {st_bytes(hdr(R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), t8), "truncated"},
        {st_bytes(hdr(R"("__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), t8), "not a string"},
        {st_bytes(hdr(R"("__metadata__":[],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), t8), "__metadata__ is not an object"},
        {st_bytes(hdr(R"("a":[0,8])"), t8), "tensor 'a': not an object"},
    };
    for (const auto& c : cases) {
        const std::string err = open_error(d, c.bytes);
        EXPECT_NE(err.find(c.expect), std::string::npos) << "expected '" << c.expect << "', got: " << (err.empty() ? "(opened)" : err);
    }
    // A valid minimal file opens: the cases above fail for their stated reason only.
    EXPECT_EQ(open_error(d, st_bytes(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), t8)), "");
    EXPECT_EQ(open_error(d, st_bytes("{}", "")), "");
    // Not a file.
    EXPECT_THROW(SafetensorsReader r(d.path), Error);
    EXPECT_THROW(SafetensorsReader r(d.file("absent.safetensors")), Error);
}

#if defined(__FLT16_MAX__)
TEST(Safetensors, HalfPrecisionMatchesTheCompilersFloat16) {
    // Every half value converts to float and back unchanged (NaN stays NaN),
    // and float -> half rounds as the compiler's _Float16 conversion does.
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = f16_to_float(uint16_t(h));
        _Float16 ref;
        const uint16_t hh = uint16_t(h);
        std::memcpy(&ref, &hh, 2);
        if (std::isnan(f)) {
            EXPECT_TRUE(std::isnan(float(ref)));
            EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f))));
            continue;
        }
        ASSERT_EQ(f, float(ref)) << h;
        ASSERT_EQ(float_to_f16(f), hh) << h;
    }
    std::mt19937 rng(11);
    std::uniform_int_distribution<uint32_t> bits;
    std::vector<float> probes = {65504.0f, 65519.99f, 65520.0f, 1e6f, -1e6f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-26f, 0x1.ffcp-15f, 6.1e-5f,
                                 -0.0f, 1.0f + 0x1p-11f, 1.0f + 0x1.8p-11f, 1.0f + 0x1p-12f};
    for (int i = 0; i < 200000; i++) {
        uint32_t u = bits(rng);
        float f;
        std::memcpy(&f, &u, 4);
        probes.push_back(f);
        probes.push_back(std::ldexp(float(int(u % 2048) - 1024), int(u >> 27) - 40));  // values near half's range
    }
    for (float f : probes) {
        if (std::isnan(f)) continue;
        const _Float16 ref = static_cast<_Float16>(f);
        uint16_t rb;
        std::memcpy(&rb, &ref, 2);
        ASSERT_EQ(float_to_f16(f), rb) << f;
    }
}
#endif
