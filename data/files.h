// Files: the one way gpt opens a file it reads and writes a file it keeps.
//
// Reading. InputFile::open refuses anything but a regular file, and checks
// before it opens: a FIFO would block the open (and every read) forever,
// /dev/zero would be read until the OOM killer comes, a directory reads as 0
// bytes, and opening some devices has side effects. The check is stat() on the
// path, then open(O_NONBLOCK) and fstat() on the descriptor (the path may have
// been swapped in between). read_input reads a whole file up to a size limit
// stated by the caller, so a wrong path never becomes a huge allocation.
// Messages name what the file is for and the path:
//   "config file 'x.yaml': is a FIFO (named pipe), not a regular file"
//
// Writing. write_all and AppendFile report every failed or short write
// (ENOSPC, EIO, EDQUOT) as Error(RunFailed) naming the file; AppendFile::append
// writes one record and, when the write fails part way, cuts the file back to
// where the record began, so a full disk never leaves a torn record behind.
// write_file_atomic writes a temporary file beside the target, fsyncs and
// renames it, so readers see the old file or the new one, never half of one.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace gpt {

// Size limits for files read whole (the bigger binary files check their size
// against their header instead).
constexpr uint64_t kSmallFileLimit = 64 << 10;      // a `latest` pointer, a one-line file
constexpr uint64_t kTextFileLimit = 64ull << 20;    // configs, search spaces, tokenizer files, proposer answers
constexpr uint64_t kJournalLimit = 1ull << 30;      // a search journal

class InputFile {
public:
    // Opens `path` for reading after checking that it is a regular file.
    // `what` names the file's role ("config file", "shard", "model file").
    // Throws Error(BadInput) naming both when it is not one or cannot be opened.
    static InputFile open(const std::string& path, const std::string& what);

    InputFile() = default;
    ~InputFile();
    InputFile(InputFile&& o) noexcept;
    InputFile& operator=(InputFile&& o) noexcept;
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    int fd() const { return fd_; }
    uint64_t size() const { return size_; }  // at open
    const std::string& path() const { return path_; }
    const std::string& what() const { return what_; }

    // Exactly `n` bytes at `offset`, or Error(BadInput) ("truncated ...").
    void read_at(void* buf, size_t n, uint64_t offset) const;
    // The whole file, or Error(BadInput) when it is larger than max_bytes.
    std::string read_all(uint64_t max_bytes) const;
    // The next line without its '\n' (a last line without one too); false at
    // the end. Lines longer than max_line are Error(BadInput).
    bool read_line(std::string& line, size_t max_line = 64 << 20);

private:
    int fd_ = -1;
    uint64_t size_ = 0;
    std::string path_, what_;
    std::string buf_;  // read_line's read-ahead
    size_t buf_pos_ = 0;
    bool eof_ = false;
};

// The whole of a regular file, at most max_bytes (Error(BadInput) otherwise).
std::string read_input(const std::string& path, const std::string& what, uint64_t max_bytes);

// "" when path is a regular file (following symlinks) or does not exist, else
// what it is ("a directory", "a FIFO (named pipe)", "a character device", ...).
std::string special_file_kind(const std::string& path);

// Writes every byte or throws Error(RunFailed) naming `path` (with "disk
// full?" for ENOSPC/EDQUOT).
void write_all(int fd, const void* data, size_t bytes, const std::string& path);

// Writes bytes to path atomically: `path.tmp.<pid>` in the same directory,
// fsync, rename, fsync of the directory. A failure removes the temp file.
void write_file_atomic(const std::string& path, const std::string& bytes);

// An append-only record file (log.jsonl). Each append() is one complete
// record or an error: a failed write is cut back off the file and thrown as
// Error(RunFailed) naming the file.
class AppendFile {
public:
    AppendFile() = default;
    // truncate: start the file empty; else append to what is there.
    AppendFile(const std::string& path, bool truncate, const std::string& what);
    ~AppendFile();
    AppendFile(const AppendFile&) = delete;
    AppendFile& operator=(const AppendFile&) = delete;

    bool is_open() const { return fd_ >= 0; }
    void append(const std::string& record);  // written as given (include the '\n')
    void sync();                             // fsync; errors thrown like append's

private:
    int fd_ = -1;
    std::string path_, what_;
};

// Whether process `pid` exists (on this machine's PID namespace): false only
// when kill(pid, 0) says ESRCH. Used to tell a killed writer's leftovers from
// a live writer's work in progress.
bool process_alive(pid_t pid);

}  // namespace gpt
