#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "data/json.h"
#include "kernels/convert.h"
#include "kernels/error.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

struct DTypeName {
    StDType t;
    const char* name;
    size_t size;
};
constexpr DTypeName kDTypes[] = {
    {StDType::BOOL, "BOOL", 1}, {StDType::U8, "U8", 1},   {StDType::I8, "I8", 1},   {StDType::I16, "I16", 2},
    {StDType::U16, "U16", 2},   {StDType::F16, "F16", 2}, {StDType::BF16, "BF16", 2}, {StDType::I32, "I32", 4},
    {StDType::U32, "U32", 4},   {StDType::F32, "F32", 4}, {StDType::F64, "F64", 8}, {StDType::I64, "I64", 8},
    {StDType::U64, "U64", 8},   {StDType::F8_E4M3, "F8_E4M3", 1}, {StDType::F8_E5M2, "F8_E5M2", 1},
};

// The reference implementation refuses headers above 100 MB: a bigger one is
// a corrupt length field, not a real file.
constexpr uint64_t kMaxHeader = 100'000'000;
// Integers in the header are JSON numbers, which we hold as doubles: exact up to 2^53.
constexpr double kMaxExactInt = 9007199254740992.0;

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// a * b, or false on uint64 overflow.
bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) {
    if (a != 0 && b > UINT64_MAX / a) return false;
    out = a * b;
    return true;
}

void pread_all(int fd, void* dst, size_t n, uint64_t at, const std::string& path) {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
        const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(at));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) run_failed("safetensors file '" + path + "': read failed: " + std::strerror(errno));
        if (r == 0) bad_input("safetensors file '" + path + "': truncated while reading (the file shrank?)");
        p += r;
        n -= size_t(r);
        at += uint64_t(r);
    }
}

void write_all(int fd, const void* src, size_t n, const std::string& path) {
    const char* p = static_cast<const char*>(src);
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) run_failed("writing '" + path + "' failed (disk full?): " + std::strerror(errno));
        p += w;
        n -= size_t(w);
    }
}

}  // namespace

size_t st_dtype_size(StDType t) {
    for (const auto& d : kDTypes)
        if (d.t == t) return d.size;
    return 0;
}

const char* st_dtype_name(StDType t) {
    for (const auto& d : kDTypes)
        if (d.t == t) return d.name;
    return "?";
}

bool st_dtype_parse(const std::string& name, StDType& out) {
    for (const auto& d : kDTypes)
        if (name == d.name) {
            out = d.t;
            return true;
        }
    return false;
}

uint16_t float_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((ax >> 13) & 0x3ffu);  // NaN stays a (quiet) NaN
    // 65520 is halfway between the largest half (65504, odd mantissa) and 2^16: it and above round to infinity.
    if (ax >= 0x477ff000u) return sign | 0x7c00u;
    if (ax < 0x38800000u) {
        // Below the smallest normal half (2^-14): a multiple of 2^-24. Scaling by
        // 2^24 is exact, and nearbyint rounds to nearest even (the default mode).
        float a;
        std::memcpy(&a, &ax, 4);
        return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
    }
    const uint32_t e = (ax >> 23) - 127 + 15, m = ax & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    const uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // a carry into the exponent is still right
    return sign | static_cast<uint16_t>(h);
}

float f16_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0) {
        const float v = std::ldexp(static_cast<float>(m), -24);  // zero or subnormal: exact
        std::memcpy(&x, &v, 4);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e - 15 + 127) << 23) | (m << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

uint64_t StTensorInfo::numel() const {
    uint64_t n = 1;
    for (int64_t d : shape) n *= uint64_t(d);
    return n;
}

// ---- reading ----

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
    auto bad = [&](const std::string& what) { bad_input("safetensors file '" + path + "': " + what); };
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);  // a FIFO: fstat refuses it, no wait for a writer
    if (fd_ < 0) bad(std::string("cannot open: ") + std::strerror(errno));
    struct stat sb;
    if (::fstat(fd_, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ::close(fd_);
        fd_ = -1;
        bad("not a regular file");
    }
    try {
        const uint64_t size = uint64_t(sb.st_size);
        if (size < 8) bad("truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
        unsigned char len_bytes[8];
        pread_all(fd_, len_bytes, 8, 0, path);
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = (n << 8) | len_bytes[i];
        if (n > kMaxHeader) bad("header length " + std::to_string(n) + " is implausible (over 100 MB: not a safetensors file?)");
        if (n > size - 8)
            bad("header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) + "-byte file (truncated?)");
        std::string text(n, '\0');
        pread_all(fd_, text.data(), n, 8, path);
        if (n == 0 || text[0] != '{') bad("the header does not start with '{' (not a safetensors file?)");
        Json header;
        try {
            header = parse_json(text, /*reject_duplicate_keys=*/true);
        } catch (const std::exception& e) {
            bad(std::string("bad JSON header: ") + e.what());
        }
        if (!header.is_object()) bad("the header is not a JSON object");
        data_start_ = 8 + n;
        const uint64_t data_len = size - data_start_;

        for (const auto& [name, v] : header.obj) {
            if (name == "__metadata__") {
                if (!v.is_object()) bad("__metadata__ is not an object of strings");
                for (const auto& [k, s] : v.obj) {
                    if (!s.is_string()) bad("__metadata__ value of '" + k + "' is not a string");
                    metadata_[k] = s.str;
                }
                continue;
            }
            // A named reference: clang before 16 cannot capture a structured binding.
            const std::string& tensor = name;
            auto bad_t = [&](const std::string& what) { bad("tensor '" + tensor + "': " + what); };
            if (!v.is_object()) bad_t("not an object with dtype, shape and data_offsets");
            StTensorInfo t;
            t.name = name;
            const Json* dt = v.find("dtype");
            if (!dt || !dt->is_string()) bad_t("no dtype");
            if (!st_dtype_parse(dt->str, t.dtype)) bad_t("unknown dtype '" + dt->str + "'");
            const Json* shape = v.find("shape");
            if (!shape || !shape->is_array()) bad_t("no shape array");
            uint64_t numel = 1;
            for (const Json& d : shape->arr) {
                if (!d.is_number() || d.num < 0 || d.num != std::floor(d.num) || d.num > kMaxExactInt)
                    bad_t("shape entries must be non-negative integers");
                t.shape.push_back(static_cast<int64_t>(d.num));
                if (!mul_ok(numel, uint64_t(d.num), numel)) bad_t("shape " + shape_text(t.shape) + " overflows");
            }
            const Json* off = v.find("data_offsets");
            if (!off || !off->is_array() || off->arr.size() != 2) bad_t("data_offsets must be [begin, end]");
            for (const Json& o : off->arr)
                if (!o.is_number() || o.num < 0 || o.num != std::floor(o.num) || o.num > kMaxExactInt)
                    bad_t("data_offsets must be non-negative integers");
            t.begin = uint64_t(off->arr[0].num);
            t.end = uint64_t(off->arr[1].num);
            if (t.end < t.begin) bad_t("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] end before they begin");
            uint64_t bytes = 0;
            if (!mul_ok(numel, st_dtype_size(t.dtype), bytes)) bad_t("shape " + shape_text(t.shape) + " overflows");
            if (t.end - t.begin != bytes)
                bad_t("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] hold " + std::to_string(t.end - t.begin) +
                      " bytes but " + st_dtype_name(t.dtype) + " " + shape_text(t.shape) + " needs " + std::to_string(bytes));
            tensors_.push_back(std::move(t));
        }
        // The data buffer is covered exactly: sorted by offset, each tensor
        // starts where the previous ended, the last ends at the end of the file.
        std::stable_sort(tensors_.begin(), tensors_.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
            return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
        });
        uint64_t at = 0;
        std::string prev;
        for (const auto& t : tensors_) {
            if (t.begin < at) bad("tensor '" + t.name + "' overlaps tensor '" + prev + "' (data_offsets begin at " + std::to_string(t.begin) +
                                  ", the previous tensor ends at " + std::to_string(at) + ")");
            if (t.begin > at)
                bad("a hole in the data buffer: bytes [" + std::to_string(at) + ", " + std::to_string(t.begin) + ") before tensor '" + t.name +
                    "' belong to no tensor");
            at = t.end;
            prev = t.name;
        }
        if (at != data_len)
            bad("the tensors cover " + std::to_string(at) + " bytes of data but the file holds " + std::to_string(data_len) +
                (at > data_len ? " (truncated?)" : " (trailing bytes belong to no tensor)"));
        for (size_t i = 0; i < tensors_.size(); i++) index_[tensors_[i].name] = i;
    } catch (...) {
        ::close(fd_);
        fd_ = -1;
        throw;
    }
}

SafetensorsReader::~SafetensorsReader() {
    if (fd_ >= 0) ::close(fd_);
}

bool SafetensorsReader::has(const std::string& name) const { return index_.count(name) != 0; }

const StTensorInfo& SafetensorsReader::info(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) bad_input("safetensors file '" + path_ + "': no tensor named '" + name + "'");
    return tensors_[it->second];
}

std::vector<char> SafetensorsReader::read_raw(const std::string& name) const {
    const StTensorInfo& t = info(name);
    std::vector<char> out(t.end - t.begin);
    pread_all(fd_, out.data(), out.size(), data_start_ + t.begin, path_);
    return out;
}

std::vector<float> SafetensorsReader::read_f32(const std::string& name, const std::vector<int64_t>& expect_shape) const {
    const StTensorInfo& t = info(name);
    if (!expect_shape.empty() && t.shape != expect_shape)
        bad_input("safetensors file '" + path_ + "': tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected " +
                  shape_text(expect_shape));
    const size_t n = t.numel();
    std::vector<float> out(n);
    switch (t.dtype) {
        case StDType::F32: pread_all(fd_, out.data(), n * 4, data_start_ + t.begin, path_); break;
        case StDType::BF16:
        case StDType::F16: {
            std::vector<uint16_t> raw(n);
            pread_all(fd_, raw.data(), n * 2, data_start_ + t.begin, path_);
            if (t.dtype == StDType::BF16)
                for (size_t i = 0; i < n; i++) out[i] = static_cast<float>(bf16_to_double(raw[i]));
            else
                for (size_t i = 0; i < n; i++) out[i] = f16_to_float(raw[i]);
            break;
        }
        case StDType::F64: {
            std::vector<double> raw(n);
            pread_all(fd_, raw.data(), n * 8, data_start_ + t.begin, path_);
            for (size_t i = 0; i < n; i++) out[i] = static_cast<float>(raw[i]);
            break;
        }
        default:
            bad_input("safetensors file '" + path_ + "': tensor '" + name + "' is " + st_dtype_name(t.dtype) +
                      ", not a floating-point dtype (F32, BF16, F16, F64)");
    }
    return out;
}

// ---- writing ----

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void SafetensorsWriter::add(const std::string& name, StDType dtype, std::vector<int64_t> shape, Fill fill) {
    if (name.empty() || name == "__metadata__") bad_input("safetensors: invalid tensor name '" + name + "'");
    for (const auto& e : entries_)
        if (e.name == name) bad_input("safetensors: tensor '" + name + "' added twice");
    for (int64_t d : shape)
        if (d < 0) bad_input("safetensors: tensor '" + name + "' has a negative dimension");
    entries_.push_back({name, dtype, std::move(shape), std::move(fill)});
}

void SafetensorsWriter::add(const std::string& name, StDType dtype, std::vector<int64_t> shape, const void* data) {
    const size_t es = st_dtype_size(dtype);
    const char* base = static_cast<const char*>(data);
    add(name, dtype, std::move(shape), [base, es](void* dst, size_t first, size_t count) { std::memcpy(dst, base + first * es, count * es); });
}

void SafetensorsWriter::add_from_f32(const std::string& name, StDType dtype, std::vector<int64_t> shape, const float* data) {
    switch (dtype) {
        case StDType::F32: add(name, dtype, std::move(shape), static_cast<const void*>(data)); return;
        case StDType::BF16:
            add(name, dtype, std::move(shape), [data](void* dst, size_t first, size_t count) {
                uint16_t* d = static_cast<uint16_t*>(dst);
                for (size_t i = 0; i < count; i++) d[i] = double_to_bf16(data[first + i]);
            });
            return;
        case StDType::F16:
            add(name, dtype, std::move(shape), [data](void* dst, size_t first, size_t count) {
                uint16_t* d = static_cast<uint16_t*>(dst);
                for (size_t i = 0; i < count; i++) d[i] = float_to_f16(data[first + i]);
            });
            return;
        default: bad_input(std::string("safetensors: cannot store float32 values as ") + st_dtype_name(dtype));
    }
}

void SafetensorsWriter::write_fd(int fd, const std::string& name) const {
    Json header = Json::object();
    if (!metadata_.empty()) {
        Json m = Json::object();
        for (const auto& [k, v] : metadata_) m.set(k, Json(v));
        header.set("__metadata__", std::move(m));
    }
    uint64_t at = 0;
    std::vector<uint64_t> numels;
    for (const auto& e : entries_) {
        uint64_t n = 1;
        for (int64_t d : e.shape) n *= uint64_t(d);
        numels.push_back(n);
        const uint64_t bytes = n * st_dtype_size(e.dtype);
        Json t = Json::object();
        t.set("dtype", Json(st_dtype_name(e.dtype)));
        Json shape = Json::array();
        for (int64_t d : e.shape) shape.push(Json(static_cast<long long>(d)));
        t.set("shape", std::move(shape));
        Json off = Json::array();
        off.push(Json(static_cast<long long>(at)));
        off.push(Json(static_cast<long long>(at + bytes)));
        t.set("data_offsets", std::move(off));
        header.set(e.name, std::move(t));
        at += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // the data buffer starts 8-byte aligned
    std::string head(8, '\0');
    for (int i = 0; i < 8; i++) head[size_t(i)] = static_cast<char>((uint64_t(text.size()) >> (8 * i)) & 0xff);
    head += text;

    write_all(fd, head.data(), head.size(), name);
    constexpr size_t kChunkBytes = size_t(4) << 20;
    std::vector<char> buf;
    for (size_t i = 0; i < entries_.size(); i++) {
        const Entry& e = entries_[i];
        const size_t es = st_dtype_size(e.dtype), per = std::max<size_t>(1, kChunkBytes / es);
        for (uint64_t first = 0; first < numels[i]; first += per) {
            const size_t count = size_t(std::min<uint64_t>(per, numels[i] - first));
            buf.resize(count * es);
            e.fill(buf.data(), size_t(first), count);
            write_all(fd, buf.data(), buf.size(), name);
        }
    }
}

void SafetensorsWriter::write(const std::string& path) const {
    const fs::path final_path(path);
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) run_failed("cannot write '" + tmp + "': " + std::strerror(errno));
    try {
        write_fd(fd, tmp);
        if (::fsync(fd) != 0) run_failed("writing '" + tmp + "' failed (fsync): " + std::strerror(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    if (::close(fd) != 0) {
        ::unlink(tmp.c_str());
        run_failed("writing '" + tmp + "' failed (close): " + std::strerror(errno));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        run_failed("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(err));
    }
    const std::string dir = final_path.parent_path().empty() ? "." : final_path.parent_path().string();
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

}  // namespace gpt
