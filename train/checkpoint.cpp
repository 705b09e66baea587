#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kernels/convert.h"
#include "kernels/error.h"

namespace fs = std::filesystem;

namespace gpt {

namespace {

// state.bin: "GPTSTATE", uint32 version, then fixed fields, then the moments.
constexpr char kStateMagic[8] = {'G', 'P', 'T', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kStateVersion = 1;

void fsync_path(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

void write_raw(const std::string& path, const void* data, size_t bytes) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) run_failed("cannot write '" + path + "': " + std::strerror(errno));
    size_t w = std::fwrite(data, 1, bytes, f);
    bool ok = w == bytes && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
    std::fclose(f);
    if (!ok) run_failed("writing '" + path + "' failed (disk full?): " + std::strerror(errno));
}

std::string read_all(const std::string& path, const char* what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) bad_input(std::string(what) + " '" + path + "': cannot open: " + std::strerror(errno));
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

template <class T> void put(std::string& out, const T& v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }

struct Reader {
    const std::string& buf;
    const std::string& path;
    size_t pos = 0;
    template <class T> T get() {
        if (pos + sizeof(T) > buf.size()) bad_input("state file '" + path + "' is truncated");
        T v;
        std::memcpy(&v, buf.data() + pos, sizeof v);
        pos += sizeof v;
        return v;
    }
};

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    write_raw(tmp, bytes.data(), bytes.size());
    if (std::rename(tmp.c_str(), path.c_str()) != 0) run_failed("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
    fsync_path(fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string());
}

void write_model_file(const std::string& path, const ModelShape& s, const std::vector<float>& params) {
    const std::vector<std::string> keys = s.arch.non_gpt2_keys();
    if (!keys.empty())
        bad_input("cannot write '" + path + "' as an llm.c model file: it describes GPT-2 only, and this model has " + keys.front() +
                  (keys.size() > 1 ? " (and " + std::to_string(keys.size() - 1) + " more non-GPT-2 choices)" : std::string()));
    int32_t header[256] = {};
    header[0] = kModelMagic;
    header[1] = 3;
    header[2] = s.maxT;
    header[3] = s.V;
    header[4] = s.L;
    header[5] = s.NH;
    header[6] = s.C;
    header[7] = s.Vp;
    std::string bytes(reinterpret_cast<const char*>(header), sizeof header);
    bytes.append(reinterpret_cast<const char*>(params.data()), params.size() * sizeof(float));
    write_raw(path, bytes.data(), bytes.size());
}

std::vector<float> read_model_file(const std::string& path, ModelShape& s) {
    const std::string buf = read_all(path, "model file");
    if (buf.size() < 1024) bad_input("model file '" + path + "' is truncated: " + std::to_string(buf.size()) + " bytes, shorter than its 1024-byte header");
    int32_t h[256];
    std::memcpy(h, buf.data(), sizeof h);
    if (h[0] != kModelMagic)
        bad_input("model file '" + path + "': bad magic " + std::to_string(h[0]) + " (expected " + std::to_string(kModelMagic) + ": not an llm.c model file)");
    if (h[1] != 3 && h[1] != 5)
        bad_input("model file '" + path + "': unsupported version " + std::to_string(h[1]) + " (expected 3 = float32 or 5 = bf16)");
    s.maxT = h[2];
    s.V = h[3];
    s.L = h[4];
    s.NH = h[5];
    s.C = h[6];
    s.Vp = h[7] > 0 ? h[7] : (h[3] + 127) / 128 * 128;
    if (s.maxT <= 0 || s.V <= 0 || s.L <= 0 || s.NH <= 0 || s.C <= 0 || s.Vp < s.V || s.C % s.NH != 0)
        bad_input("model file '" + path + "': implausible shape in header (maxT " + std::to_string(s.maxT) + ", V " + std::to_string(s.V) +
                  ", L " + std::to_string(s.L) + ", NH " + std::to_string(s.NH) + ", C " + std::to_string(s.C) + ")");
    const size_t n = param_count(s);
    const size_t esize = h[1] == 3 ? 4 : 2;
    if (buf.size() != 1024 + n * esize)
        bad_input("model file '" + path + "': size " + std::to_string(buf.size()) + " bytes does not match its header (" +
                  std::to_string(n) + " parameters need " + std::to_string(1024 + n * esize) + " bytes)");
    std::vector<float> params(n);
    if (esize == 4) {
        std::memcpy(params.data(), buf.data() + 1024, n * 4);
    } else {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(buf.data() + 1024);
        for (size_t i = 0; i < n; i++) params[i] = static_cast<float>(bf16_to_double(src[i]));
    }
    return params;
}

static std::string encode_state(const TrainState& st) {
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
    out.append(reinterpret_cast<const char*>(st.m.data()), st.m.size() * 4);
    out.append(reinterpret_cast<const char*>(st.v.data()), st.v.size() * 4);
    return out;
}

void read_state_file(const std::string& path, TrainState& st) {
    const std::string buf = read_all(path, "state file");
    if (buf.size() < 12 || std::memcmp(buf.data(), kStateMagic, 8) != 0)
        bad_input("state file '" + path + "': bad magic (not a gpt checkpoint state file)");
    Reader r{buf, path, 8};
    const uint32_t version = r.get<uint32_t>();
    if (version != kStateVersion)
        bad_input("state file '" + path + "': unsupported version " + std::to_string(version) + " (this build reads " + std::to_string(kStateVersion) + ")");
    st.step = r.get<int64_t>();
    st.tokens = r.get<int64_t>();
    st.train_time_s = r.get<double>();
    st.eval_time_s = r.get<double>();
    st.data.shard = r.get<uint64_t>();
    st.data.offset = r.get<uint64_t>();
    st.data.epoch = r.get<uint64_t>();
    st.rank = r.get<int32_t>();
    st.world = r.get<int32_t>();
    st.have_last_eval = r.get<int32_t>() != 0;
    st.last_eval_time_s = r.get<double>();
    st.last_eval_loss = r.get<double>();
    st.time_to_target_s = r.get<double>();
    const uint64_t n = r.get<uint64_t>();
    if (buf.size() != r.pos + 8 * n)
        bad_input("state file '" + path + "': size " + std::to_string(buf.size()) + " does not match its " + std::to_string(n) + " optimizer values (truncated?)");
    st.m.resize(n);
    st.v.resize(n);
    std::memcpy(st.m.data(), buf.data() + r.pos, n * 4);
    std::memcpy(st.v.data(), buf.data() + r.pos + n * 4, n * 4);
}

std::string save_checkpoint(const std::string& out_dir, const ModelShape& shape, const std::vector<float>& params,
                            const TrainState& state, const std::string& config_yaml, int keep) {
    const fs::path root = fs::path(out_dir) / "checkpoints";
    fs::create_directories(root);
    char name[32];
    std::snprintf(name, sizeof name, "step_%06lld", static_cast<long long>(state.step));
    const fs::path final_dir = root / name;
    const fs::path tmp_dir = root / (std::string(name) + ".tmp." + std::to_string(::getpid()));
    fs::remove_all(tmp_dir);
    fs::create_directories(tmp_dir);
    write_model_file((tmp_dir / "model.bin").string(), shape, params);
    const std::string st = encode_state(state);
    write_raw((tmp_dir / "state.bin").string(), st.data(), st.size());
    write_raw((tmp_dir / "config.yaml").string(), config_yaml.data(), config_yaml.size());
    fsync_path(tmp_dir.string());
    // A checkpoint of the same step (a resumed run saving again) is replaced whole.
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(tmp_dir, final_dir);
    fsync_path(root.string());
    write_file_atomic((root / "latest").string(), std::string(name) + "\n");

    if (keep > 0) {
        std::vector<std::string> steps;
        for (const auto& e : fs::directory_iterator(root)) {
            const std::string n = e.path().filename().string();
            if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find(".tmp.") == std::string::npos) steps.push_back(n);
        }
        std::sort(steps.begin(), steps.end());
        for (size_t i = 0; i + keep < steps.size(); i++)
            if (steps[i] != name) fs::remove_all(root / steps[i]);
    }
    return final_dir.string();
}

std::string resolve_checkpoint(const std::string& path) {
    const fs::path p(path);
    if (fs::exists(p / "model.bin") && fs::exists(p / "state.bin")) return p.string();
    for (const fs::path& latest : {p / "checkpoints" / "latest", p / "latest"}) {
        if (fs::exists(latest)) {
            std::ifstream f(latest);
            std::string name;
            f >> name;
            const fs::path dir = latest.parent_path() / name;
            if (!name.empty() && fs::exists(dir / "model.bin") && fs::exists(dir / "state.bin")) return dir.string();
            bad_input("checkpoint '" + path + "': '" + latest.string() + "' names '" + name + "', which is not a complete checkpoint");
        }
    }
    if (!fs::exists(p)) bad_input("checkpoint '" + path + "': no such file or directory");
    bad_input("checkpoint '" + path + "': neither a checkpoint directory (model.bin + state.bin) nor a run directory with checkpoints/latest");
}

}  // namespace gpt
