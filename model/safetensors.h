// safetensors files: named tensors with a dtype and a shape, and string metadata.
//
// The format (huggingface/safetensors), all little-endian:
//   u64 N                      length of the header
//   N bytes of JSON            {"NAME": {"dtype": "F32", "shape": [768, 2304], "data_offsets": [BEGIN, END]},
//                               ..., "__metadata__": {"key": "value", ...}}   (may end in spaces)
//   the data buffer            each tensor's raw row-major bytes at [BEGIN, END) of the buffer
//
// Reading validates what the reference implementation does, with an error
// naming the file: the header fits the file and is a JSON object, every dtype
// is known, every shape is non-negative integers, every tensor's byte range
// equals numel x dtype size, the ranges neither overlap nor leave holes and
// cover the buffer exactly to the end of the file, names are unique, and
// metadata values are strings. Tensors are read on demand (one pread each),
// so a 6 GB file costs no more memory than the tensor being read.
//
// Writing streams: a tensor is either host memory or a fill callback that
// produces its elements a chunk at a time (a transposed or converted copy
// never exists whole). The file is written under a temporary name in the
// same directory, fsynced and renamed: a kill leaves the old file or the new one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace gpt {

// The dtypes of the format, named as in the header.
enum class StDType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };
size_t st_dtype_size(StDType t);
const char* st_dtype_name(StDType t);
// False when `name` is not one of the format's dtypes.
bool st_dtype_parse(const std::string& name, StDType& out);

// IEEE half precision <-> float, round to nearest even (subnormals, inf and NaN kept).
uint16_t float_to_f16(float x);
float f16_to_float(uint16_t h);

struct StTensorInfo {
    std::string name;
    StDType dtype = StDType::F32;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte range in the data buffer
    uint64_t numel() const;
};

class SafetensorsReader {
public:
    // Opens and validates the file; throws BadInput naming the file.
    explicit SafetensorsReader(const std::string& path);
    ~SafetensorsReader();
    SafetensorsReader(const SafetensorsReader&) = delete;
    SafetensorsReader& operator=(const SafetensorsReader&) = delete;

    const std::string& path() const { return path_; }
    // In data-offset order (the order of the bytes in the file).
    const std::vector<StTensorInfo>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    bool has(const std::string& name) const;
    // Throws BadInput naming the file and the tensor when absent.
    const StTensorInfo& info(const std::string& name) const;

    // The tensor's raw little-endian bytes.
    std::vector<char> read_raw(const std::string& name) const;
    // The tensor as float32, converted from F32, F16, BF16 or F64 (exact for the
    // first three); another dtype, or a shape other than `expect_shape` when one
    // is given, is BadInput naming the file and the tensor.
    std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& expect_shape = {}) const;

private:
    std::string path_;
    int fd_ = -1;
    uint64_t data_start_ = 0;
    std::vector<StTensorInfo> tensors_;
    std::map<std::string, size_t> index_;
    std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
public:
    // Fills `count` elements starting at element `first` of the tensor into dst,
    // already in the tensor's dtype.
    using Fill = std::function<void(void* dst, size_t first, size_t count)>;

    void set_metadata(const std::string& key, const std::string& value);
    // A tensor from host memory, which must stay valid until write() returns.
    void add(const std::string& name, StDType dtype, std::vector<int64_t> shape, const void* data);
    // A tensor produced chunk by chunk while writing.
    void add(const std::string& name, StDType dtype, std::vector<int64_t> shape, Fill fill);
    // A float32 source stored as F32, BF16 or F16 (rounded to nearest even).
    void add_from_f32(const std::string& name, StDType dtype, std::vector<int64_t> shape, const float* data);

    // Writes the file atomically (temp file, fsync, rename). Tensors keep the
    // order they were added in; the header is padded with spaces so the data
    // buffer starts 8-byte aligned. Throws RunFailed on an I/O error,
    // BadInput on a duplicate or empty name.
    void write(const std::string& path) const;
    // The same bytes to an open file descriptor, nothing synced or renamed:
    // for a caller that makes a whole directory atomic itself (checkpoints).
    // `name` is the file named in errors.
    void write_fd(int fd, const std::string& name) const;

private:
    struct Entry {
        std::string name;
        StDType dtype;
        std::vector<int64_t> shape;
        Fill fill;
    };
    std::vector<Entry> entries_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace gpt
