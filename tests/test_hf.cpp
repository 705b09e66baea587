// Hugging Face interop: our GPT-2 against an independent PyTorch GPT-2 that
// reads tensors by their HF names (tools/hf-reference.py), the export/import
// round trip, what an import refuses, and the CLI paths (export, import,
// eval and train --init on an HF folder).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "data/json.h"
#include "kernels/backend.h"
#include "kernels/convert.h"
#include "kernels/error.h"
#include "model/gpt2.h"
#include "model/hf.h"
#include "model/safetensors.h"
#include "tests/test_util.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

ModelShape small_shape() {
    ModelShape s;
    s.L = 2;
    s.NH = 2;
    s.C = 16;
    s.maxT = 8;
    s.V = 50;  // padded to 128
    s.Vp = 128;
    return s;
}

// Random parameters (not GPT-2's init: every value differs, LayerNorm weights too).
std::vector<float> random_params(const ModelShape& s, uint64_t seed) {
    auto be = make_backend("cpu", 1);
    GPT2 m(s, *be, 1, 1);
    test::randomize_params(m, seed, 0.3);
    return m.params_llmc();
}

// Mean loss and per-position losses of the CPU model on token rows (each row: inputs t[:-1], targets t[1:]).
double cpu_loss(const ModelShape& s, const std::vector<float>& params, const std::vector<std::vector<int32_t>>& rows,
                std::vector<double>* losses = nullptr, std::vector<double>* logits = nullptr) {
    const int B = int(rows.size()), T = int(rows[0].size()) - 1;
    auto be = make_backend("cpu", 1);
    GPT2 m(s, *be, B, T);
    m.load_params_llmc(params);
    std::vector<int32_t> x, y;
    for (const auto& r : rows) {
        x.insert(x.end(), r.begin(), r.end() - 1);
        y.insert(y.end(), r.begin() + 1, r.end());
    }
    if (logits) {
        m.forward(x.data(), nullptr);
        *logits = m.logits();
    }
    const double loss = m.forward(x.data(), y.data());
    if (losses) *losses = m.losses();
    return loss;
}

// The position in the llm.c-order vector where tensor `name` starts.
size_t llmc_pos(const ModelShape& s, const std::string& name) {
    size_t at = 0;
    for (const auto& t : param_layout(s).tensors) {
        if (t.name == name) return at;
        at += t.numel;
    }
    return SIZE_MAX;
}

// A Python with torch: Debian's python3-torch installs into /usr/bin/python3,
// which need not be the first python3 on PATH.
std::string python_with_torch() {
    for (const char* py : {"python3", "/usr/bin/python3"})
        if (std::system((std::string(py) + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0) return py;
    return "";
}

std::vector<std::vector<int32_t>> rows_of(const Json& j) {
    std::vector<std::vector<int32_t>> rows;
    for (const Json& r : j.arr) {
        rows.emplace_back();
        for (const Json& t : r.arr) rows.back().push_back(int32_t(t.num));
    }
    return rows;
}

}  // namespace

// The committed tests/data/hf-tiny was written by tools/hf-reference.py: its
// own safetensors writer, OpenAI's naming (no "transformer." prefix, mask
// buffers present), and the loss PyTorch computes in float64 from those
// tensors. Our import plus our CPU forward must give the same numbers.
TEST(HfImport, TorchWrittenModelGivesTorchsLoss) {
    const std::string dir = test::source_path("tests/data/hf-tiny");
    ModelShape s;
    const std::vector<float> params = import_hf(dir, s);
    EXPECT_EQ(s.L, 2);
    EXPECT_EQ(s.NH, 4);
    EXPECT_EQ(s.C, 32);
    EXPECT_EQ(s.maxT, 16);
    EXPECT_EQ(s.V, 96);
    EXPECT_EQ(s.Vp, 128);
    const Json exp = parse_json(test::read_file(dir + "/expected.json"));
    const auto rows = rows_of(*exp.find("tokens"));
    std::vector<double> losses, logits;
    const double loss = cpu_loss(s, params, rows, &losses, &logits);
    const double want = exp.number("loss");
    std::printf("[ torch ] committed tests/data/hf-tiny: our loss %.9f, PyTorch (float64) %.9f, relative difference %.2e\n", loss, want,
                std::fabs(loss - want) / want);
    EXPECT_NEAR(loss, want, 1e-5 * want) << "ours " << loss << ", PyTorch " << want;
    const Json& wl = *exp.find("losses");
    size_t k = 0;
    for (const Json& row : wl.arr)
        for (const Json& v : row.arr) {
            EXPECT_NEAR(losses[k], v.num, 2e-5 * std::max(1.0, std::fabs(v.num))) << "position " << k;
            k++;
        }
    EXPECT_EQ(k, losses.size());
    const Json& lg = *exp.find("logits_row0_pos0");
    ASSERT_EQ(lg.arr.size(), size_t(s.V));
    for (int v = 0; v < s.V; v++) EXPECT_NEAR(logits[size_t(v)], lg.arr[size_t(v)].num, 2e-5 * std::max(1.0, std::fabs(lg.arr[size_t(v)].num))) << v;
}

TEST(HfExport, RoundTripIsBitExactAndUsesHfLayout) {
    TempDir d;
    const ModelShape s = small_shape();
    std::vector<float> params = random_params(s, 5);
    // The padding rows of wte (V..Vp) are not part of an HF model; they are
    // zero after an import, so start from zero there to compare everything.
    const size_t wte = llmc_pos(s, "wte");
    std::fill(params.begin() + long(wte + size_t(s.V) * s.C), params.begin() + long(wte + size_t(s.Vp) * s.C), 0.0f);

    HfExportOptions opt;
    opt.source = "test";
    export_hf(d.file("a"), s, params, opt);

    // The file has exactly GPT2LMHeadModel's names and shapes, F32.
    SafetensorsReader r(d.file("a/model.safetensors"));
    const std::vector<std::string> names = hf_tensor_names(s);
    EXPECT_EQ(r.tensors().size(), names.size());
    EXPECT_EQ(names.size(), size_t(2 + 12 * s.L + 2));
    EXPECT_TRUE(r.has("transformer.h.1.attn.c_attn.weight"));
    EXPECT_TRUE(r.has("transformer.ln_f.bias"));
    EXPECT_FALSE(r.has("lm_head.weight"));  // tied, as save_pretrained writes it
    EXPECT_EQ(r.metadata().at("format"), "pt");
    EXPECT_EQ(r.info("transformer.wte.weight").shape, (std::vector<int64_t>{s.V, s.C}));
    EXPECT_EQ(r.info("transformer.h.0.attn.c_attn.weight").shape, (std::vector<int64_t>{s.C, 3 * s.C}));
    EXPECT_EQ(r.info("transformer.h.0.mlp.c_proj.weight").shape, (std::vector<int64_t>{4 * s.C, s.C}));
    // Conv1D weights are (in, out): HF [i][o] = ours [o][i], here for layer 1.
    const std::vector<float> cattn = r.read_f32("transformer.h.1.attn.c_attn.weight");
    const size_t qkv1 = llmc_pos(s, "qkvw") + size_t(3 * s.C) * s.C;
    for (int o = 0; o < 3 * s.C; o += 7)
        for (int i = 0; i < s.C; i += 3) ASSERT_EQ(cattn[size_t(i) * 3 * s.C + o], params[qkv1 + size_t(o) * s.C + i]) << o << "," << i;
    const std::vector<float> fcproj = r.read_f32("transformer.h.0.mlp.c_proj.weight");  // ours (C, 4C), HF (4C, C)
    const size_t fp0 = llmc_pos(s, "fcprojw");
    EXPECT_EQ(fcproj[size_t(5) * s.C + 3], params[fp0 + size_t(3) * 4 * s.C + 5]);

    const Json cfg = parse_json(test::read_file(d.file("a/config.json")));
    EXPECT_EQ(cfg.string("model_type"), "gpt2");
    EXPECT_EQ(cfg.find("architectures")->arr.at(0).str, "GPT2LMHeadModel");
    EXPECT_EQ(cfg.number("n_layer"), s.L);
    EXPECT_EQ(cfg.number("n_head"), s.NH);
    EXPECT_EQ(cfg.number("n_embd"), s.C);
    EXPECT_EQ(cfg.number("n_positions"), s.maxT);
    EXPECT_EQ(cfg.number("vocab_size"), s.V);
    EXPECT_EQ(cfg.string("activation_function"), "gelu_new");
    EXPECT_TRUE(cfg.boolean("tie_word_embeddings"));

    ModelShape back;
    const std::vector<float> again = import_hf(d.file("a"), back);
    EXPECT_EQ(back.L, s.L);
    EXPECT_EQ(back.NH, s.NH);
    EXPECT_EQ(back.C, s.C);
    EXPECT_EQ(back.maxT, s.maxT);
    EXPECT_EQ(back.V, s.V);
    EXPECT_EQ(back.Vp, s.Vp);
    ASSERT_EQ(again.size(), params.size());
    EXPECT_EQ(std::memcmp(again.data(), params.data(), params.size() * 4), 0) << "ours -> HF -> ours changes no bit";
    export_hf(d.file("b"), back, again, opt);
    EXPECT_EQ(test::read_file(d.file("a/model.safetensors")), test::read_file(d.file("b/model.safetensors")));
    EXPECT_EQ(test::read_file(d.file("a/config.json")), test::read_file(d.file("b/config.json")));

    // A model written by PyTorch goes HF -> ours -> HF with every tensor unchanged.
    const std::string tiny = test::source_path("tests/data/hf-tiny");
    ModelShape ts;
    export_hf(d.file("c"), ts, import_hf(tiny, ts), opt);
    SafetensorsReader orig(tiny + "/model.safetensors"), ours(d.file("c/model.safetensors"));
    for (const auto& name : hf_tensor_names(ts)) EXPECT_EQ(ours.read_f32(name), orig.read_f32(name.substr(12))) << name;
}

TEST(HfExport, HalfPrecisionExportsRoundOnce) {
    TempDir d;
    const ModelShape s = small_shape();
    const std::vector<float> params = random_params(s, 9);
    const size_t wte = llmc_pos(s, "wte");
    for (StDType dt : {StDType::BF16, StDType::F16}) {
        HfExportOptions opt;
        opt.dtype = dt;
        export_hf(d.file(st_dtype_name(dt)), s, params, opt);
        EXPECT_EQ(parse_json(test::read_file(d.file(std::string(st_dtype_name(dt)) + "/config.json"))).string("torch_dtype"),
                  dt == StDType::BF16 ? "bfloat16" : "float16");
        ModelShape back;
        const std::vector<float> again = import_hf(d.file(st_dtype_name(dt)), back);
        for (size_t i = 0; i < params.size(); i++) {
            if (i >= wte + size_t(s.V) * s.C && i < wte + size_t(s.Vp) * s.C) continue;  // padding rows
            const float want = dt == StDType::BF16 ? float(bf16_to_double(double_to_bf16(params[i]))) : f16_to_float(float_to_f16(params[i]));
            ASSERT_EQ(again[i], want) << st_dtype_name(dt) << " element " << i;
        }
    }
}

TEST(HfImport, RefusesWhatTheModelCannotRepresent) {
    TempDir d;
    const ModelShape s = small_shape();
    const std::vector<float> params = random_params(s, 2);
    auto fresh = [&](const std::string& name) {
        export_hf(d.file(name), s, params, HfExportOptions{});
        return d.file(name);
    };
    auto import_error = [&](const std::string& dir) -> std::string {
        try {
            ModelShape x;
            import_hf(dir, x);
            return "";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind, ErrorKind::BadInput);
            return e.what();
        }
    };
    auto edit_config = [&](const std::string& dir, const std::string& key, Json v) {
        Json c = parse_json(test::read_file(dir + "/config.json"));
        c.set(key, std::move(v));
        test::write_file(dir + "/config.json", c.dump());
    };
    // Rewrites model.safetensors with one tensor dropped, changed or added.
    auto edit_tensors = [&](const std::string& dir, const std::string& drop, const std::string& add, const std::vector<float>& add_values,
                            std::vector<int64_t> add_shape) {
        SafetensorsReader r(dir + "/model.safetensors");
        std::map<std::string, std::vector<float>> keep;
        SafetensorsWriter w;
        for (const auto& t : r.tensors()) {
            if (t.name == drop) continue;
            keep[t.name] = r.read_f32(t.name);
            w.add(t.name, StDType::F32, t.shape, keep[t.name].data());
        }
        if (!add.empty()) w.add(add, StDType::F32, add_shape, add_values.data());
        w.write(dir + "/model.safetensors");
    };

    std::string dir = fresh("act");
    edit_config(dir, "activation_function", Json("relu"));
    EXPECT_NE(import_error(dir).find("activation_function 'relu'"), std::string::npos) << import_error(dir);

    dir = fresh("eps");
    edit_config(dir, "layer_norm_epsilon", Json(1e-6));
    EXPECT_NE(import_error(dir).find("layer_norm_epsilon"), std::string::npos);

    dir = fresh("type");
    edit_config(dir, "model_type", Json("llama"));
    EXPECT_NE(import_error(dir).find("model_type is 'llama'"), std::string::npos);

    dir = fresh("shape");
    edit_config(dir, "n_embd", Json(32));
    EXPECT_NE(import_error(dir).find("has shape"), std::string::npos) << import_error(dir);

    dir = fresh("missing");
    edit_tensors(dir, "transformer.h.1.mlp.c_fc.bias", "", {}, {});
    EXPECT_NE(import_error(dir).find("no tensor 'transformer.h.1.mlp.c_fc.bias'"), std::string::npos) << import_error(dir);

    dir = fresh("extra");
    const std::vector<float> junk(4, 1.0f);
    edit_tensors(dir, "", "transformer.h.0.attn.q_norm.weight", junk, {4});
    EXPECT_NE(import_error(dir).find("tensors GPT-2 does not have: transformer.h.0.attn.q_norm.weight"), std::string::npos) << import_error(dir);

    // lm_head.weight: accepted when it is wte (tied), refused when it differs.
    SafetensorsReader ref(fresh("ref") + "/model.safetensors");
    std::vector<float> head = ref.read_f32("transformer.wte.weight");
    dir = fresh("tied");
    edit_tensors(dir, "", "lm_head.weight", head, {s.V, s.C});
    EXPECT_EQ(import_error(dir), "");
    head[3] += 1.0f;
    dir = fresh("untied");
    edit_tensors(dir, "", "lm_head.weight", head, {s.V, s.C});
    EXPECT_NE(import_error(dir).find("untied head"), std::string::npos) << import_error(dir);

    dir = d.file("pickle");
    std::filesystem::create_directories(dir);
    test::write_file(dir + "/config.json", "{}");
    test::write_file(dir + "/pytorch_model.bin", "x");
    EXPECT_NE(import_error(dir).find("only pytorch_model.bin"), std::string::npos) << import_error(dir);
    EXPECT_NE(import_error(d.file("absent")).find("no config.json"), std::string::npos);
}

// The live version of the PyTorch check, on our own export of a random model:
// runs when a Python with torch is installed (Debian: python3-torch). Without
// it the committed check above (TorchWrittenModelGivesTorchsLoss) still runs.
TEST(HfExport, PyTorchReadingOurExportComputesOurLoss) {
    const std::string py = python_with_torch();
    if (py.empty()) GTEST_SKIP() << "no python3 with torch (apt-get install python3-torch); HfImport.TorchWrittenModelGivesTorchsLoss still compares with PyTorch's committed numbers";
    TempDir d;
    const ModelShape s = small_shape();
    const std::vector<float> params = random_params(s, 21);
    export_hf(d.file("m"), s, params, HfExportOptions{});
    const std::vector<std::vector<int32_t>> rows = {{1, 7, 49, 3, 3, 20, 11, 0, 42}, {48, 2, 9, 9, 30, 5}};
    // Rows of different lengths would not batch: use the first 6 tokens of each.
    std::vector<std::vector<int32_t>> even = {{rows[0].begin(), rows[0].begin() + 6}, rows[1]};
    test::write_file(d.file("tokens.json"), "[[1,7,49,3,3,20],[48,2,9,9,30,5]]");
    const std::string out = d.file("torch.json");
    const std::string cmd = py + " " + test::source_path("tools/hf-reference.py") + " loss " + d.file("m") + " " + d.file("tokens.json") + " > " + out;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const Json torch = parse_json(test::read_file(out));
    std::vector<double> losses;
    const double ours = cpu_loss(s, params, even, &losses);
    std::printf("[ torch ] our export read by tools/hf-reference.py: our loss %.9f, PyTorch (float64) %.9f, relative difference %.2e\n", ours,
                torch.number("loss"), std::fabs(ours - torch.number("loss")) / ours);
    EXPECT_NEAR(ours, torch.number("loss"), 1e-5 * ours) << "ours " << ours << ", PyTorch " << torch.number("loss");
    size_t k = 0;
    for (const Json& row : torch.find("losses")->arr)
        for (const Json& v : row.arr) EXPECT_NEAR(losses[k++], v.num, 2e-5 * std::max(1.0, v.num));
}
