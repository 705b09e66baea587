// Self-describing model files (model/model_file.h): every architecture
// round-trips through safetensors with its shape rebuilt from the metadata
// alone; a file describing a model this build cannot run is refused, naming
// the key; llm.c model files describe plain GPT-2 only, both ways.
#include <gtest/gtest.h>

#include <fstream>

#include "kernels/backend.h"
#include "kernels/error.h"
#include "model/gpt2.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

ModelShape small() {
    ModelShape s;
    s.L = 2;
    s.NH = 2;
    s.C = 8;
    s.maxT = 6;
    s.V = 11;
    s.Vp = 128;
    return s;
}

Arch modern() {
    Arch a;
    a.pos = PosEmb::rope;
    a.rope_base = 777.5;
    a.norm = NormKind::rmsnorm;
    a.norm_params = false;
    a.qk_norm = true;
    a.act = Activation::relu2;
    a.bias = false;
    a.tied_head = false;
    a.softcap = 12.25;
    return a;
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind, ErrorKind::BadInput) << e.what();
        return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
}

}  // namespace

TEST(ModelFile, EveryArchitectureRoundTrips) {
    TempDir d;
    auto be = make_backend("cpu", 1);
    std::vector<Arch> archs = {Arch{}, modern()};
    Arch a = Arch{};
    a.norm = NormKind::rmsnorm;  // gains, no biases
    archs.push_back(a);
    a = Arch{};
    a.tied_head = false;
    archs.push_back(a);
    for (const Arch& arch : archs) {
        ModelShape s = small();
        s.arch = arch;
        GPT2 m(s, *be, 1, 4);
        test::randomize_params(m, 4, 0.3);
        const auto params = m.params_llmc();
        const std::string path = d.file("m.safetensors");
        write_model_safetensors(path, s, params, "model:\n  n_layer: 2\n");
        EXPECT_TRUE(looks_like_safetensors(path));
        ModelShape r;
        std::string cfg;
        const auto back = read_model_safetensors(path, r, &cfg);
        EXPECT_EQ(back, params);
        EXPECT_EQ(r.arch, s.arch);
        EXPECT_EQ(r.L, s.L);
        EXPECT_EQ(r.NH, s.NH);
        EXPECT_EQ(r.C, s.C);
        EXPECT_EQ(r.maxT, s.maxT);
        EXPECT_EQ(r.V, s.V);
        EXPECT_EQ(r.Vp, s.Vp);
        EXPECT_EQ(cfg, "model:\n  n_layer: 2\n");
        // The tensors carry their layout names and shapes.
        SafetensorsReader st(path);
        for (const auto& t : param_layout(s).tensors) EXPECT_EQ(st.info(t.name).shape, t.shape) << t.name;
    }
}

TEST(ModelFile, RefusesWhatItCannotDescribe) {
    TempDir d;
    ModelShape s = small();
    s.arch = modern();
    const Layout layout = param_layout(s);
    size_t n = 0;
    for (const auto& t : layout.tensors) n += t.numel;
    const std::vector<float> params(n, 0.5f);

    // An llm.c file describes GPT-2 only: writing this model as one is refused, naming the key.
    const std::string e1 = error_of([&] { write_model_file(d.file("m.bin"), s, params); });
    EXPECT_NE(e1.find("model.pos_emb=rope"), std::string::npos) << e1;

    // A model key this build does not know, or a value it does not know.
    auto write_with = [&](const std::string& key, const std::string& value) {
        SafetensorsWriter w;
        w.set_metadata("format", kModelFormat);
        w.set_metadata("format_version", "1");
        for (const auto& [k, v] : model_metadata(s)) w.set_metadata(k, k == key ? value : v);
        if (!key.empty() && key.rfind("model.", 0) == 0 && value == "new") w.set_metadata(key, value);
        size_t pos = 0;
        for (const auto& t : layout.tensors) {
            w.add(t.name, StDType::F32, t.shape, params.data() + pos);
            pos += t.numel;
        }
        w.write(d.file("x.safetensors"));
        ModelShape r;
        return error_of([&] { read_model_safetensors(d.file("x.safetensors"), r); });
    };
    std::string e = write_with("model.swiglu", "new");
    EXPECT_NE(e.find("model.swiglu"), std::string::npos) << e;
    e = write_with("model.activation", "swiglu");
    EXPECT_NE(e.find("model.activation=swiglu"), std::string::npos) << e;
    e = write_with("model.norm_params", "maybe");
    EXPECT_NE(e.find("model.norm_params"), std::string::npos) << e;

    // A safetensors file that is not a gpt model file.
    SafetensorsWriter other;
    const float x[2] = {1, 2};
    other.add("transformer.wte.weight", StDType::F32, {2}, x);
    other.write(d.file("hf.safetensors"));
    ModelShape r;
    e = error_of([&] { read_model_safetensors(d.file("hf.safetensors"), r); });
    EXPECT_NE(e.find("not a gpt model file"), std::string::npos) << e;

    // A missing tensor.
    ModelShape plain = small();
    std::vector<float> pp(param_count(plain), 0.25f);
    write_model_safetensors(d.file("p.safetensors"), plain, pp, "");
    SafetensorsReader full(d.file("p.safetensors"));
    SafetensorsWriter cut;
    for (const auto& [k, v] : full.metadata()) cut.set_metadata(k, v);
    std::vector<std::vector<float>> keep;
    for (const auto& t : full.tensors())
        if (t.name != "fcb") keep.push_back(full.read_f32(t.name)), cut.add(t.name, StDType::F32, t.shape, keep.back().data());
    cut.write(d.file("cut.safetensors"));
    e = error_of([&] { read_model_safetensors(d.file("cut.safetensors"), r); });
    EXPECT_NE(e.find("'fcb'"), std::string::npos) << e;

    // An llm.c file is not taken for safetensors.
    write_model_file(d.file("gpt2.bin"), plain, pp);
    EXPECT_FALSE(looks_like_safetensors(d.file("gpt2.bin")));
}

// A file's model against a config's (resume, --init): the first model.* key
// that differs is named; rope_base counts only with rotary positions; a
// GPT-2-only format (an llm.c file, a Hugging Face GPT-2 folder) read for a
// config that is not GPT-2 says it cannot hold that model.
TEST(ModelFile, MismatchNamesTheFirstDifferingKey) {
    TempDir d;
    ModelShape m = small();
    m.arch = modern();
    std::vector<float> mp(param_count(m), 0.5f);
    write_model_safetensors(d.file("m.safetensors"), m, mp, "");
    EXPECT_NO_THROW(check_model_matches(m, m, d.file("m.safetensors"), "checkpoint"));
    ModelShape other = m;
    other.arch.qk_norm = false;
    other.arch.bias = true;
    std::string e = error_of([&] { check_model_matches(m, other, d.file("m.safetensors"), "checkpoint"); });
    EXPECT_NE(e.find("checkpoint '" + d.file("m.safetensors") + "' holds a different model than the config: model.qk_norm is true there, false in the config"),
              std::string::npos)
        << e;
    other = m;
    other.C = 16;
    e = error_of([&] { check_model_matches(m, other, d.file("m.safetensors"), "checkpoint"); });
    EXPECT_NE(e.find("model.n_embd is 8 there, 16 in the config"), std::string::npos) << e;

    ModelShape plain = small(), plain_base = small();
    plain_base.arch.rope_base = 500;  // no rotary positions: the base changes nothing
    write_model_file(d.file("gpt2.bin"), plain, std::vector<float>(param_count(plain), 0.25f));
    EXPECT_NO_THROW(check_model_matches(plain, plain_base, d.file("gpt2.bin"), "model.init"));
    ModelShape rope = small();
    rope.arch.pos = PosEmb::rope;
    e = error_of([&] { check_model_matches(plain, rope, d.file("gpt2.bin"), "model.init"); });
    EXPECT_NE(e.find("is an llm.c model file, which describes plain GPT-2 only, but the config has model.pos_emb=rope"), std::string::npos) << e;
    e = error_of([&] { check_model_matches(plain, rope, d.path, "model.init"); });
    EXPECT_NE(e.find("is a Hugging Face GPT-2 folder, which describes plain GPT-2 only"), std::string::npos) << e;
}
