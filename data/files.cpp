#include "data/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "kernels/error.h"

namespace gpt {

namespace {

std::string kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO (named pipe)";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

std::string errno_text(int err) {
    std::string s = std::strerror(err);
    if (err == ENOSPC || err == EDQUOT) s += " (disk full?)";
    return s;
}

std::string quoted(const std::string& what, const std::string& path) { return what + " '" + path + "'"; }

}  // namespace

std::string special_file_kind(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return "";
    return S_ISREG(st.st_mode) ? "" : kind_of(st.st_mode);
}

InputFile InputFile::open(const std::string& path, const std::string& what) {
    const std::string name = quoted(what, path);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) bad_input(name + ": cannot open: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) bad_input(name + ": is " + kind_of(st.st_mode) + ", not a regular file");
    // O_NONBLOCK: should the path have become a FIFO since the stat, the open
    // returns at once instead of waiting for a writer; fstat then refuses it.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) bad_input(name + ": cannot open: " + std::strerror(errno));
    InputFile f;
    f.fd_ = fd;
    f.path_ = path;
    f.what_ = what;
    if (::fstat(fd, &st) != 0) bad_input(name + ": cannot stat: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) bad_input(name + ": is " + kind_of(st.st_mode) + ", not a regular file");
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    f.size_ = uint64_t(st.st_size);
    return f;
}

InputFile::~InputFile() {
    if (fd_ >= 0) ::close(fd_);
}

InputFile::InputFile(InputFile&& o) noexcept
    : fd_(o.fd_), size_(o.size_), path_(std::move(o.path_)), what_(std::move(o.what_)), buf_(std::move(o.buf_)),
      buf_pos_(o.buf_pos_), eof_(o.eof_) {
    o.fd_ = -1;
}

InputFile& InputFile::operator=(InputFile&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = o.fd_;
        size_ = o.size_;
        path_ = std::move(o.path_);
        what_ = std::move(o.what_);
        buf_ = std::move(o.buf_);
        buf_pos_ = o.buf_pos_;
        eof_ = o.eof_;
        o.fd_ = -1;
    }
    return *this;
}

void InputFile::read_at(void* buf, size_t n, uint64_t offset) const {
    char* p = static_cast<char*>(buf);
    size_t got = 0;
    while (got < n) {
        const ssize_t r = ::pread(fd_, p + got, n - got, off_t(offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) bad_input(quoted(what_, path_) + ": read error: " + std::strerror(errno));
        if (r == 0)
            bad_input(quoted(what_, path_) + ": truncated: wanted " + std::to_string(n) + " bytes at offset " + std::to_string(offset) +
                      ", the file ends after " + std::to_string(offset + got));
        got += size_t(r);
    }
}

std::string InputFile::read_all(uint64_t max_bytes) const {
    const std::string name = quoted(what_, path_);
    if (size_ > max_bytes)
        bad_input(name + ": " + std::to_string(size_) + " bytes is more than the " + std::to_string(max_bytes) + "-byte limit for a " + what_);
    std::string out;
    out.reserve(size_t(size_));
    char chunk[1 << 16];
    for (uint64_t off = 0;;) {
        const ssize_t r = ::pread(fd_, chunk, sizeof chunk, off_t(off));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) bad_input(name + ": read error: " + std::strerror(errno));
        if (r == 0) break;
        out.append(chunk, size_t(r));
        off += uint64_t(r);
        // The file may grow while it is read: the limit holds for what is read.
        if (out.size() > max_bytes)
            bad_input(name + ": more than the " + std::to_string(max_bytes) + "-byte limit for a " + what_ + " (it grew while being read)");
    }
    return out;
}

bool InputFile::read_line(std::string& line, size_t max_line) {
    line.clear();
    for (;;) {
        const size_t nl = buf_.find('\n', buf_pos_);
        if (nl != std::string::npos) {
            line.append(buf_, buf_pos_, nl - buf_pos_);
            buf_pos_ = nl + 1;
            return true;
        }
        line.append(buf_, buf_pos_, std::string::npos);
        buf_.clear();
        buf_pos_ = 0;
        if (line.size() > max_line)
            bad_input(quoted(what_, path_) + ": a line longer than " + std::to_string(max_line) + " bytes");
        if (eof_) return !line.empty();
        buf_.resize(1 << 16);
        ssize_t r;
        do r = ::read(fd_, buf_.data(), buf_.size());
        while (r < 0 && errno == EINTR);
        if (r < 0) bad_input(quoted(what_, path_) + ": read error: " + std::strerror(errno));
        buf_.resize(size_t(r));
        if (r == 0) eof_ = true;
    }
}

std::string read_input(const std::string& path, const std::string& what, uint64_t max_bytes) {
    return InputFile::open(path, what).read_all(max_bytes);
}

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
        const ssize_t w = ::write(fd, p, bytes);
        if (w < 0 && errno == EINTR) continue;
        // A write that makes no progress without an error is treated as a full disk.
        if (w <= 0) run_failed("cannot write '" + path + "': " + errno_text(w < 0 ? errno : ENOSPC));
        p += w;
        bytes -= size_t(w);
    }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) run_failed("cannot create '" + tmp + "': " + errno_text(errno));
    try {
        write_all(fd, bytes.data(), bytes.size(), tmp);
        if (::fsync(fd) != 0) run_failed("cannot fsync '" + tmp + "': " + errno_text(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    if (::close(fd) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        run_failed("cannot close '" + tmp + "': " + errno_text(err));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        run_failed("cannot rename '" + tmp + "' to '" + path + "': " + errno_text(err));
    }
    const std::string dir = std::filesystem::path(path).parent_path().string();
    const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

AppendFile::AppendFile(const std::string& path, bool truncate, const std::string& what) : path_(path), what_(what) {
    // Checked before opening, and opened non-blocking: a FIFO would block the open until a reader came.
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) bad_input(quoted(what, path) + ": is " + kind_of(st.st_mode) + ", not a regular file");
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644);
    if (fd_ < 0) run_failed("cannot open the " + what + " '" + path + "' for writing: " + errno_text(errno));
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd_);
        fd_ = -1;
        bad_input(quoted(what, path) + ": is not a regular file");
    }
    const int flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0) ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
    if (truncate && ::ftruncate(fd_, 0) != 0) run_failed("cannot truncate the " + what + " '" + path + "': " + errno_text(errno));
}

AppendFile::~AppendFile() {
    if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& record) {
    if (fd_ < 0) return;
    const off_t start = ::lseek(fd_, 0, SEEK_END);
    const char* p = record.data();
    size_t left = record.size();
    while (left > 0) {
        const ssize_t w = ::write(fd_, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            const int err = w < 0 ? errno : ENOSPC;
            // Cut the partial record off, so the file ends with a whole one.
            const bool cut = start >= 0 && ::ftruncate(fd_, start) == 0;
            run_failed("cannot write the " + what_ + " '" + path_ + "': " + errno_text(err) + "; the record of " +
                       std::to_string(record.size()) + " bytes was not written" +
                       (cut || left == record.size() ? "" : " (and the part written could not be removed)"));
        }
        p += w;
        left -= size_t(w);
    }
}

void AppendFile::sync() {
    if (fd_ >= 0 && ::fsync(fd_) != 0) run_failed("cannot fsync the " + what_ + " '" + path_ + "': " + errno_text(errno));
}

bool process_alive(pid_t pid) {
    if (pid <= 0) return false;
    return ::kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace gpt
