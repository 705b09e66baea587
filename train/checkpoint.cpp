#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "kernels/convert.h"
#include "kernels/error.h"
#include "model/model_file.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

// state.bin: "GPTSTATE", uint32 version, the fixed fields (below), version 2's
// skip state (skipped count, the two z-score windows), then the moments m and v.
// Version 1 files (no skip state) are read too.
constexpr char kStateMagic[8] = {'G', 'P', 'T', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kStateVersion = 2;

// Shape bounds for a model file's header: far beyond any GPT-2 (or any model
// this trainer can hold), small enough that the parameter count cannot wrap.
constexpr int32_t kMaxDim = 1 << 20;    // maxT, C
constexpr int32_t kMaxVocab = 1 << 24;  // V, Vp
constexpr int32_t kMaxLayers = 1 << 12;

std::string errno_text() {
    std::string s = std::strerror(errno);
    if (errno == ENOSPC || errno == EDQUOT) s += " (disk full?)";
    return s;
}

void fsync_dir(const fs::path& dir) {
    const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

// Writes a new file with `fill` (which writes to the fd), fsync'ed, or throws
// RunFailed naming it.
template <class Fill> void write_synced_with(const std::string& path, const Fill& fill) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) run_failed("cannot create '" + path + "': " + errno_text());
    try {
        fill(fd);
        if (::fsync(fd) != 0) run_failed("cannot fsync '" + path + "': " + errno_text());
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::close(fd) != 0) run_failed("cannot close '" + path + "': " + errno_text());
}

void write_synced(const std::string& path, std::initializer_list<std::pair<const void*, size_t>> parts) {
    write_synced_with(path, [&](int fd) {
        for (const auto& [p, n] : parts) write_all(fd, p, n, path);
    });
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
    if (::rename(from.c_str(), to.c_str()) != 0)
        run_failed("cannot rename '" + from.string() + "' to '" + to.string() + "': " + errno_text());
}

// Removal of what is no longer needed: best effort, a failure is retried by
// the next save's clean-up.
void remove_quietly(const fs::path& p) {
    std::error_code ec;
    fs::remove_all(p, ec);
}

template <class T> void put(std::string& out, const T& v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

std::string printable(const std::string& s, size_t max = 80) {
    std::string out;
    for (size_t i = 0; i < s.size() && i < max; i++) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7f) out += char(c);
        else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        }
    }
    if (s.size() > max) out += "...";
    return out;
}

// A leftover of a checkpoint writer: `<base>.<kind>.<pid>`.
struct Leftover {
    std::string base, kind;
    pid_t pid = 0;
};

bool parse_leftover(const std::string& name, Leftover& out) {
    const size_t p2 = name.rfind('.');
    if (p2 == std::string::npos || p2 + 1 >= name.size()) return false;
    const size_t p1 = name.rfind('.', p2 - 1);
    if (p1 == std::string::npos || p1 == 0) return false;
    long long pid = 0;
    const char* b = name.data() + p2 + 1;
    const char* e = name.data() + name.size();
    auto [ptr, ec] = std::from_chars(b, e, pid);
    if (ec != std::errc() || ptr != e || pid <= 0 || pid > INT32_MAX) return false;
    out.base = name.substr(0, p1);
    out.kind = name.substr(p1 + 1, p2 - p1 - 1);
    out.pid = pid_t(pid);
    if (out.kind != "tmp" && out.kind != "new" && out.kind != "old" && out.kind != "del") return false;
    return out.base == "latest" || checkpoint_step_of(out.base) >= 0;
}

bool present(const fs::path& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0;
}

// Something that looks like a checkpoint directory: a model file (either
// kind) and state.bin (the readers check the files).
bool has_checkpoint_files(const fs::path& dir) {
    return (present(dir / "model.safetensors") || present(dir / "model.bin")) && present(dir / "state.bin");
}

bool writer_gone(pid_t pid) { return pid == ::getpid() || !process_alive(pid); }

// Step 1 of a save: finishes or removes what writers that died left behind.
// A `.new.` copy is complete (renamed so only after its files were synced):
// it becomes step_N when step_N is missing, else it is surplus. An `.old.`
// copy is the previous step_N: it goes back when step_N and every `.new.` copy
// are missing. `.tmp.` and `.del.` are incomplete or unwanted.
void clean_leftovers(const fs::path& root) {
    std::vector<std::pair<Leftover, fs::path>> found;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec)) {
        Leftover l;
        if (parse_leftover(e.path().filename().string(), l) && writer_gone(l.pid)) found.push_back({l, e.path()});
    }
    auto order = [](const std::string& k) { return k == "new" ? 0 : k == "old" ? 1 : 2; };
    std::sort(found.begin(), found.end(), [&](const auto& a, const auto& b) { return order(a.first.kind) < order(b.first.kind); });
    for (const auto& [l, path] : found) {
        const fs::path target = root / l.base;
        if ((l.kind == "new" || l.kind == "old") && !fs::exists(target) && has_checkpoint_files(path)) {
            rename_or_fail(path, target);
            fsync_dir(root);
        } else {
            remove_quietly(path);
        }
    }
}

// The checkpoint directories under root by step, newest first.
std::vector<std::pair<int64_t, std::string>> step_dirs(const fs::path& root) {
    std::vector<std::pair<int64_t, std::string>> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec)) {
        const std::string n = e.path().filename().string();
        const int64_t step = checkpoint_step_of(n);
        if (step >= 0 && e.is_directory(ec)) out.push_back({step, n});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    return out;
}

std::string newest_complete(const fs::path& root) {
    for (const auto& [step, name] : step_dirs(root))
        if (has_checkpoint_files(root / name)) return (root / name).string();
    return "";
}

// The complete copy a killed writer left of step directory `name`: a `.new.`
// one first (the newer weights), else an `.old.` one.
std::string leftover_copy(const fs::path& root, const std::string& name) {
    std::string old_copy;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root, ec)) {
        Leftover l;
        if (!parse_leftover(e.path().filename().string(), l) || l.base != name || !has_checkpoint_files(e.path())) continue;
        if (l.kind == "new") return e.path().string();
        if (l.kind == "old") old_copy = e.path().string();
    }
    return old_copy;
}

// The checkpoint name `latest` holds, checked: a short step_<digits> name.
std::string read_latest(const fs::path& latest) {
    const std::string text = read_input(latest.string(), "checkpoint pointer", kSmallFileLimit);
    std::string name = text;
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
    if (checkpoint_step_of(name) < 0)
        bad_input("checkpoint pointer '" + latest.string() + "': holds '" + printable(name) + "' (" + std::to_string(text.size()) +
                  " bytes), not a checkpoint name like step_000100");
    return name;
}

std::string encode_state(const TrainState& st) {
    std::string out(kStateMagic, 8);
    put(out, kStateVersion);
    put(out, st.step);
    put(out, st.tokens);
    put(out, st.train_time_s);
    put(out, st.eval_time_s);
    put(out, st.data.shard);
    put(out, st.data.offset);
    put(out, st.data.epoch);
    put(out, st.rank);
    put(out, st.world);
    put(out, int32_t(st.have_last_eval));
    put(out, st.last_eval_time_s);
    put(out, st.last_eval_loss);
    put(out, st.time_to_target_s);
    put(out, uint64_t(st.m.size()));
    put(out, st.skipped_steps);
    for (const ZScoreWindow* w : {&st.loss_window, &st.norm_window}) {
        put(out, w->count);
        put(out, w->next);
        out.append(reinterpret_cast<const char*>(w->values.data()), sizeof w->values);
    }
    return out;  // the moments follow
}

// Bytes of the fixed part above, and of version 2's skip state.
constexpr size_t kStateFixedBytes = 8 + 4 + 4 * 8 + 3 * 8 + 3 * 4 + 3 * 8 + 8;
constexpr size_t kStateSkipBytes = 8 + 2 * (4 + 4 + sizeof(ZScoreWindow::values));

// The first non-finite value of v, or -1.
int64_t first_nonfinite(const std::vector<float>& v) {
    for (size_t i = 0; i < v.size(); i++)
        if (!std::isfinite(v[i])) return int64_t(i);
    return -1;
}

}  // namespace

int64_t checkpoint_step_of(const std::string& name) {
    if (name.size() < 6 || name.size() > 5 + 18 || name.compare(0, 5, "step_") != 0) return -1;
    int64_t step = -1;
    const char* b = name.data() + 5;
    const char* e = name.data() + name.size();
    auto [p, ec] = std::from_chars(b, e, step);
    if (ec != std::errc() || p != e || step < 0) return -1;
    return step;
}

void check_llmc_describable(const ModelShape& s, const std::string& path) {
    if (const std::string other = s.arch.non_gpt2_summary(); !other.empty())
        bad_input("cannot write '" + path + "' as an llm.c model file: it describes GPT-2 only, and this model has " + other);
}

void write_model_file(const std::string& path, const ModelShape& s, const std::vector<float>& params) {
    check_llmc_describable(s, path);
    int32_t header[256] = {};
    header[0] = kModelMagic;
    header[1] = 3;
    header[2] = s.maxT;
    header[3] = s.V;
    header[4] = s.L;
    header[5] = s.NH;
    header[6] = s.C;
    header[7] = s.Vp;
    write_synced(path, {{header, sizeof header}, {params.data(), params.size() * sizeof(float)}});
}

std::vector<float> read_model_file(const std::string& path, ModelShape& s) {
    const InputFile f = InputFile::open(path, "model file");
    const uint64_t bytes = f.size();
    if (bytes < 1024)
        bad_input("model file '" + path + "' is truncated: " + std::to_string(bytes) + " bytes, shorter than its 1024-byte header");
    int32_t h[256];
    f.read_at(h, sizeof h, 0);
    if (h[0] != kModelMagic)
        bad_input("model file '" + path + "': bad magic " + std::to_string(h[0]) + " (expected " + std::to_string(kModelMagic) + ": not an llm.c model file)");
    if (h[1] != 3 && h[1] != 5)
        bad_input("model file '" + path + "': unsupported version " + std::to_string(h[1]) + " (expected 3 = float32 or 5 = bf16)");
    s.maxT = h[2];
    s.V = h[3];
    s.L = h[4];
    s.NH = h[5];
    s.C = h[6];
    // llm.c's files before the padded vocabulary leave header[7] zero.
    const int64_t vp = h[7] != 0 ? int64_t(h[7]) : (int64_t(h[3]) + 127) / 128 * 128;
    auto in = [](int64_t v, int64_t hi) { return v >= 1 && v <= hi; };
    if (!in(s.maxT, kMaxDim) || !in(s.V, kMaxVocab) || !in(s.L, kMaxLayers) || !in(s.NH, s.C > 0 ? s.C : 1) || !in(s.C, kMaxDim) ||
        s.C % s.NH != 0 || vp < s.V || vp > kMaxVocab)
        bad_input("model file '" + path + "': implausible shape in header (maxT " + std::to_string(h[2]) + ", V " + std::to_string(h[3]) +
                  ", L " + std::to_string(h[4]) + ", NH " + std::to_string(h[5]) + ", C " + std::to_string(h[6]) + ", Vp " +
                  std::to_string(h[7]) + "; each must be positive, maxT and C at most " + std::to_string(kMaxDim) + ", L at most " +
                  std::to_string(kMaxLayers) + ", V <= Vp <= " + std::to_string(kMaxVocab) + ", NH dividing C)");
    s.Vp = int(vp);
    // With the bounds above the count fits in 64 bits: (2^24 + 2^20) * 2^20 + 2^12 * 13 * 2^40.
    const size_t n = param_count(s);
    const uint64_t esize = h[1] == 3 ? 4 : 2;
    const uint64_t want = 1024 + uint64_t(n) * esize;
    if (bytes != want)
        bad_input("model file '" + path + "': size " + std::to_string(bytes) + " bytes does not match its header (" + std::to_string(n) +
                  (esize == 4 ? " float32" : " bf16") + " parameters need " + std::to_string(want) + " bytes)");
    std::vector<float> params(n);
    if (esize == 4) {
        f.read_at(params.data(), n * 4, 1024);
    } else {
        std::vector<uint16_t> raw(n);
        f.read_at(raw.data(), n * 2, 1024);
        for (size_t i = 0; i < n; i++) params[i] = static_cast<float>(bf16_to_double(raw[i]));
    }
    if (const int64_t bad = first_nonfinite(params); bad >= 0) {
        std::string tensor = "?";
        size_t pos = 0;  // llm.c order without gaps: offsets in the file are running sums
        for (const auto& t : param_layout(s).tensors) {
            if (size_t(bad) < pos + t.numel) {
                tensor = t.name + "[" + std::to_string(size_t(bad) - pos) + "]";
                break;
            }
            pos += t.numel;
        }
        bad_input("model file '" + path + "': parameter " + std::to_string(bad) + " (" + tensor + ") is " +
                  (std::isnan(params[size_t(bad)]) ? "NaN" : "infinite") + ": the weights are ruined (a diverged run?)");
    }
    return params;
}

void read_state_file(const std::string& path, TrainState& st) {
    const InputFile f = InputFile::open(path, "state file");
    const std::string name = "state file '" + path + "'";
    if (f.size() < 12) bad_input(name + ": truncated: " + std::to_string(f.size()) + " bytes (not a gpt checkpoint state file)");
    char head[kStateFixedBytes];
    f.read_at(head, 12, 0);
    if (std::memcmp(head, kStateMagic, 8) != 0) bad_input(name + ": bad magic (not a gpt checkpoint state file)");
    uint32_t version;
    std::memcpy(&version, head + 8, 4);
    if (version != 1 && version != kStateVersion)
        bad_input(name + ": unsupported version " + std::to_string(version) + " (this build reads 1 and " + std::to_string(kStateVersion) + ")");
    const size_t header_bytes = kStateFixedBytes + (version >= 2 ? kStateSkipBytes : 0);
    if (f.size() < header_bytes)
        bad_input(name + ": truncated: " + std::to_string(f.size()) + " bytes, shorter than its " + std::to_string(header_bytes) + "-byte header");
    f.read_at(head, kStateFixedBytes, 0);
    size_t pos = 12;
    auto get = [&](auto& v) {
        std::memcpy(&v, head + pos, sizeof v);
        pos += sizeof v;
    };
    int32_t have = 0;
    uint64_t n = 0;
    get(st.step);
    get(st.tokens);
    get(st.train_time_s);
    get(st.eval_time_s);
    get(st.data.shard);
    get(st.data.offset);
    get(st.data.epoch);
    get(st.rank);
    get(st.world);
    get(have);
    get(st.last_eval_time_s);
    get(st.last_eval_loss);
    get(st.time_to_target_s);
    get(n);
    // Sizes first, without arithmetic that can wrap: 8 bytes per optimizer value (m and v).
    const uint64_t body = f.size() - header_bytes;
    if (body % 8 != 0 || n != body / 8)
        bad_input(name + ": size " + std::to_string(f.size()) + " bytes does not match its count of " + std::to_string(n) +
                  " optimizer values (" + std::to_string(header_bytes) + " + 8 x count bytes expected; truncated or corrupted)");
    auto field = [&](const char* key, const std::string& value, const char* rule) {
        bad_input(name + ": field " + key + " = " + value + " is out of bounds (" + rule + "; corrupted?)");
    };
    auto finite_nonneg = [](double x) { return std::isfinite(x) && x >= 0; };
    if (st.step < 0 || st.step > kMaxStateStep) field("step", std::to_string(st.step), "0 <= step <= 2^48");
    if (st.tokens < 0) field("tokens", std::to_string(st.tokens), "must be >= 0");
    if (!finite_nonneg(st.train_time_s)) field("train_time_s", std::to_string(st.train_time_s), "finite, >= 0");
    if (!finite_nonneg(st.eval_time_s)) field("eval_time_s", std::to_string(st.eval_time_s), "finite, >= 0");
    if (st.world < 1 || st.world > kMaxStateWorld) field("world", std::to_string(st.world), "1 <= world <= 2^20");
    if (st.rank < 0 || st.rank >= st.world) field("rank", std::to_string(st.rank), "0 <= rank < world");
    if (have != 0 && have != 1) field("have_last_eval", std::to_string(have), "0 or 1");
    st.have_last_eval = have == 1;
    if (!finite_nonneg(st.last_eval_time_s) || st.last_eval_time_s > st.train_time_s)
        field("last_eval_time_s", std::to_string(st.last_eval_time_s), "finite, 0 <= value <= train_time_s");
    if (std::isnan(st.last_eval_loss) || std::isinf(st.last_eval_loss))
        field("last_eval_loss", std::to_string(st.last_eval_loss), "finite");
    // (interpolated between evaluations: allow its rounding)
    if (!std::isfinite(st.time_to_target_s) || st.time_to_target_s > st.train_time_s * (1 + 1e-9) + 1e-9)
        field("time_to_target_s", std::to_string(st.time_to_target_s), "finite, at most train_time_s; negative = not reached");
    if (st.data.shard > uint64_t(1) << 32) field("data.shard", std::to_string(st.data.shard), "a shard index below 2^32");
    if (st.data.offset > uint64_t(1) << 40) field("data.offset", std::to_string(st.data.offset), "below 2^40 tokens");
    if (st.data.epoch > uint64_t(1) << 40) field("data.epoch", std::to_string(st.data.epoch), "below 2^40");
    st.skipped_steps = 0;
    st.loss_window = st.norm_window = ZScoreWindow{};
    if (version >= 2) {
        std::vector<char> skip(kStateSkipBytes);
        f.read_at(skip.data(), skip.size(), kStateFixedBytes);
        size_t at = 0;
        auto take = [&](void* dst, size_t bytes) {
            std::memcpy(dst, skip.data() + at, bytes);
            at += bytes;
        };
        take(&st.skipped_steps, 8);
        if (st.skipped_steps < 0 || st.skipped_steps > st.step) field("skipped_steps", std::to_string(st.skipped_steps), "0 <= skipped_steps <= step");
        for (ZScoreWindow* w : {&st.loss_window, &st.norm_window}) {
            take(&w->count, 4);
            take(&w->next, 4);
            take(w->values.data(), sizeof w->values);
            if (w->count > ZScoreWindow::kSize || w->next >= ZScoreWindow::kSize || (w->count < ZScoreWindow::kSize && w->next != 0))
                field("z-score window", "count " + std::to_string(w->count) + ", next " + std::to_string(w->next),
                      "count <= 128, next < 128, next 0 until the window is full");
            for (uint32_t i = 0; i < w->count; i++)
                if (!std::isfinite(w->values[i])) field("z-score window", "a non-finite value", "finite values");
        }
    }
    st.m.resize(n);
    st.v.resize(n);
    f.read_at(st.m.data(), n * 4, header_bytes);
    f.read_at(st.v.data(), n * 4, header_bytes + n * 4);
    if (const int64_t bad = first_nonfinite(st.m); bad >= 0) field("m", "non-finite at index " + std::to_string(bad), "finite moments");
    for (size_t i = 0; i < st.v.size(); i++)
        if (!(st.v[i] >= 0) || std::isinf(st.v[i])) field("v", std::to_string(st.v[i]) + " at index " + std::to_string(i), "finite, >= 0");
}

std::string save_checkpoint(const std::string& out_dir, const ModelShape& shape, const std::vector<float>& params,
                            const TrainState& state, const std::string& config_yaml, int keep) {
    if (const int64_t bad = first_nonfinite(params); bad >= 0)
        run_failed("refusing to save a checkpoint of step " + std::to_string(state.step) + ": parameter " + std::to_string(bad) + " is not finite");
    if (first_nonfinite(state.m) >= 0 || first_nonfinite(state.v) >= 0)
        run_failed("refusing to save a checkpoint of step " + std::to_string(state.step) + ": the optimizer moments are not finite");
    const fs::path root = fs::path(out_dir) / "checkpoints";
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec) run_failed("cannot create '" + root.string() + "': " + ec.message());
    clean_leftovers(root);

    char name[32];
    std::snprintf(name, sizeof name, "step_%06lld", static_cast<long long>(state.step));
    const std::string pid = std::to_string(::getpid());
    const fs::path final_dir = root / name;
    const fs::path tmp_dir = root / (std::string(name) + ".tmp." + pid);
    remove_quietly(tmp_dir);
    if (!fs::create_directory(tmp_dir, ec)) run_failed("cannot create '" + tmp_dir.string() + "': " + (ec ? ec.message() : "it exists"));
    try {
        // Every model self-described; plain GPT-2 also in llm.c's layout, for llm.c and its tools.
        const std::string st_path = (tmp_dir / "model.safetensors").string();
        write_synced_with(st_path, [&](int fd) { model_safetensors_writer(shape, params, config_yaml).write_fd(fd, st_path); });
        if (shape.arch.non_gpt2_keys().empty()) write_model_file((tmp_dir / "model.bin").string(), shape, params);
        const std::string st = encode_state(state);
        write_synced((tmp_dir / "state.bin").string(),
                     {{st.data(), st.size()}, {state.m.data(), state.m.size() * 4}, {state.v.data(), state.v.size() * 4}});
        write_synced((tmp_dir / "config.yaml").string(), {{config_yaml.data(), config_yaml.size()}});
    } catch (...) {
        remove_quietly(tmp_dir);  // a failed write (a full disk) must not keep the disk full
        throw;
    }
    fsync_dir(tmp_dir);

    struct stat existing;
    if (::lstat(final_dir.c_str(), &existing) != 0) {
        rename_or_fail(tmp_dir, final_dir);
    } else if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
        // step_N is now the new copy; the temp name holds the old one.
        fsync_dir(root);
        remove_quietly(tmp_dir);
    } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP || errno == EOPNOTSUPP) {
        // No exchange on this file system: complete copies under marked names
        // at every step (see the header), then the old one goes.
        const fs::path new_dir = root / (std::string(name) + ".new." + pid), old_dir = root / (std::string(name) + ".old." + pid);
        rename_or_fail(tmp_dir, new_dir);
        rename_or_fail(final_dir, old_dir);
        rename_or_fail(new_dir, final_dir);
        fsync_dir(root);
        remove_quietly(old_dir);
    } else {
        const std::string err = errno_text();
        remove_quietly(tmp_dir);
        run_failed("cannot replace '" + final_dir.string() + "' with '" + tmp_dir.string() + "': " + err);
    }
    fsync_dir(root);
    write_file_atomic((root / "latest").string(), std::string(name) + "\n");

    if (keep > 0) {
        const auto steps = step_dirs(root);
        for (size_t i = size_t(keep); i < steps.size(); i++) {
            if (steps[i].second == name) continue;
            const fs::path doomed = root / (steps[i].second + ".del." + pid);
            if (::rename((root / steps[i].second).c_str(), doomed.c_str()) == 0) remove_quietly(doomed);
        }
    }
    return final_dir.string();
}

std::string checkpoint_model_file(const std::string& dir) {
    const fs::path st = fs::path(dir) / "model.safetensors";
    return (present(st) ? st : fs::path(dir) / "model.bin").string();
}

std::vector<float> read_any_model_file(const std::string& path, ModelShape& shape_out) {
    InputFile::open(path, "model file");  // a FIFO, a device or a directory: refused by name before anything reads it
    if (looks_like_safetensors(path)) return read_model_safetensors(path, shape_out);
    return read_model_file(path, shape_out);
}

void check_model_matches(const ModelShape& file, const ModelShape& config, const std::string& file_path, const std::string& what) {
    const std::string diff = first_model_difference(file, config, "there", "in the config");
    if (diff.empty()) return;
    // An llm.c file holds plain GPT-2: when only architecture keys differ, the config asks for what it cannot hold.
    const std::string key = diff.substr(0, diff.find(' '));
    const bool shape_key = key == "model.n_layer" || key == "model.n_head" || key == "model.n_embd" || key == "model.seq_len" ||
                           key == "model.vocab_size" || key == "model.padded_vocab_size";
    const auto keys = config.arch.non_gpt2_keys();
    if (!shape_key && !keys.empty() && file.arch.non_gpt2_keys().empty() && !looks_like_safetensors(file_path)) {
        std::error_code ec;
        const char* kind = fs::is_directory(file_path, ec) ? "a Hugging Face GPT-2 folder" : "an llm.c model file";
        bad_input(what + " '" + file_path + "' is " + kind + ", which describes plain GPT-2 only, but the config has " + keys.front() +
                  ": this model needs a model.safetensors (every checkpoint writes one)");
    }
    bad_input(what + " '" + file_path + "' holds a different model than the config: " + diff);
}

std::string resolve_checkpoint(const std::string& path) {
    const fs::path p(path);
    std::error_code ec;
    if (const std::string kind = special_file_kind(path); !kind.empty() && kind != "a directory")
        bad_input("checkpoint '" + path + "': is " + kind + ", not a checkpoint directory, run directory or model file");
    if (fs::is_directory(p, ec) && has_checkpoint_files(p)) return p.string();
    for (const fs::path& latest : {p / "checkpoints" / "latest", p / "latest"}) {
        struct stat st;
        if (::stat(latest.c_str(), &st) != 0) continue;
        const fs::path root = latest.parent_path();
        const std::string name = read_latest(latest);
        const fs::path dir = root / name;
        if (has_checkpoint_files(dir)) return dir.string();
        // A writer killed while replacing step_N left it missing and a complete copy beside it.
        if (const std::string copy = leftover_copy(root, name); !copy.empty()) return copy;
        const std::string newest = newest_complete(root);
        bad_input("checkpoint '" + path + "': '" + latest.string() + "' names '" + name + "', which is not a complete checkpoint" +
                  (newest.empty() ? std::string(" (and there is no other)") : "; the newest complete one there is '" + newest + "'"));
    }
    // No `latest`: a kill between the first checkpoint's rename and its pointer.
    for (const fs::path& root : {p / "checkpoints", p})
        if (fs::is_directory(root, ec))
            if (const std::string newest = newest_complete(root); !newest.empty()) return newest;
    if (!fs::exists(p, ec)) bad_input("checkpoint '" + path + "': no such file or directory");
    bad_input("checkpoint '" + path + "': neither a checkpoint directory (model.safetensors or model.bin, and state.bin) nor a run "
              "directory with checkpoints/latest");
}

std::string run_dir_of_checkpoint(const std::string& checkpoint_dir) {
    fs::path d = fs::path(checkpoint_dir).lexically_normal();
    if (d.has_filename() == false) d = d.parent_path();  // a trailing '/'
    std::string leaf = d.filename().string();
    Leftover l;
    if (parse_leftover(leaf, l)) leaf = l.base;
    if (checkpoint_step_of(leaf) < 0 || d.parent_path().filename() != "checkpoints") return "";
    const fs::path run = d.parent_path().parent_path();
    return run.empty() ? "." : run.string();
}

}  // namespace gpt
