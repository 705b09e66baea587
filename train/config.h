// The run configuration: YAML sections model, data, optim, schedule, run, kernels.
//
// Every key is declared once in a schema (train/config.cpp) with its type,
// default, range and help text; parsing, `--set a.b=c` overrides, validation
// errors (key, file:line, closest valid key) and printing the effective config
// all go through that schema.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "model/layout.h"

namespace gpt {

struct ModelConfig {
    std::string preset;     // "" or one of d12 d24 d36 d48 tiny nano: fills the shape
    int n_layer = 12;
    int n_head = 12;
    int n_embd = 768;
    int seq_len = 1024;     // maximum context length (rows of wpe)
    int vocab_size = 50257; // real vocabulary; padded to a multiple of 128 internally
};

struct SyntheticConfig {
    int order = 2;          // Markov order k: next token depends on the previous k
    int vocab = 64;         // tokens used by the chain (must be <= model.vocab_size)
    double sharpness = 2.0; // scale of the random transition logits: higher = lower entropy
    int seed = 1234;        // seed of the chain's transition table
};

struct DataConfig {
    std::string source = "synthetic";  // "synthetic" or "shards"
    std::string train;                 // glob of train shards (source: shards)
    std::string val;                   // glob of val shards (source: shards)
    std::string tokenizer;             // GPT-2 tokenizer dir for val_bpb and samples; "" = $GPT_TOKENIZER_DIR, else built in
    SyntheticConfig synthetic;
};

struct OptimConfig {
    double lr = 6e-4;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;
    double grad_clip = 1.0;     // 0 disables clipping
};

struct ScheduleConfig {
    std::string type = "cosine";  // cosine | linear | wsd | constant
    int warmup_steps = 0;
    int steps = 0;                // decay horizon; 0 = run.max_steps
    double final_lr_frac = 0.0;   // lr at the end of the decay, as a fraction of optim.lr
    double decay_frac = 0.2;      // wsd: fraction of the horizon spent decaying
};

struct RunConfig {
    std::string backend = "auto";  // auto | cpu | cuda
    int zero = 0;                  // data parallel: 0 = replicated optimizer, 1 = ZeRO-1 (sharded moments)
    double dist_timeout_s = 600;   // a collective waiting longer ends the job (a rank died or hung); 0 = never
    bool overlap_reduce = true;    // data parallel: all-reduce gradients layer by layer during the backward pass
    bool warmup_pass = true;       // an untimed forward/backward before step 1 (no update): first-use costs leave the clock
    bool cuda_graph = false;       // record the whole optimizer step once (a CUDA graph) and replay it (train/step.h)
    int threads = 0;               // CPU threads, 0 = all cores
    int seed = 42;                 // weight init seed
    int batch_size = 4;            // micro-batch B
    int seq_len = 0;               // T; 0 = model.seq_len
    long total_batch_tokens = 0;   // tokens per optimizer step; 0 = B*T (no accumulation)
    int max_steps = 0;             // 0 = no step limit (budget_s or target must be set)
    double budget_s = 0;           // training wall-clock budget, 0 = none
    double target_val_loss = 0;    // stop when the target metric <= this; 0 = none
    std::string target_metric = "val_loss";  // val_loss | val_bpb (needs a tokenizer)
    int val_every = 0;             // evaluate every N steps (0 = only at the end)
    int val_batches = 8;           // batches per evaluation
    int log_every = 1;             // JSONL step records every N steps
    int checkpoint_every = 0;      // 0 = only at the end, -1 = never (except when interrupted)
    int sample_every = 0;          // print a generated sample every N steps, 0 = never
    int sample_tokens = 64;        // tokens per sample
    std::string out_dir = "runs/latest";
};

struct Config {
    ModelConfig model;
    DataConfig data;
    OptimConfig optim;
    ScheduleConfig schedule;
    RunConfig run;
    std::map<std::string, std::string> kernels;  // filled by the CUDA and search issues
    std::string source;                          // file the config came from ("" = defaults)
};

// Loads a YAML file (path may be empty: defaults only), applies `key=value`
// overrides in order, fills presets and validates. Throws Error(BadInput)
// naming the key, the file and line, and the closest valid key.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);

// Parses YAML text (used for checkpoints, which embed the effective config).
Config parse_config_text(const std::string& yaml, const std::string& origin,
                         const std::vector<std::string>& overrides = {});

// The effective config as YAML, every key present (the form written to logs and checkpoints).
std::string config_to_yaml(const Config& c);
// The effective config as one JSON object (for the JSONL log).
std::string config_to_json(const Config& c);

// A JSON string literal (quotes and escapes) for the logs.
std::string json_quote(const std::string& s);

// Reference of every key: "section.key  type  default  help" lines, for --help and the README.
std::string config_reference();

// Derived values.
inline int padded_vocab(int V) { return (V + 127) / 128 * 128; }
inline int train_seq_len(const Config& c) { return c.run.seq_len > 0 ? c.run.seq_len : c.model.seq_len; }
inline ModelShape model_shape(const Config& c) {
    return ModelShape{c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.seq_len, c.model.vocab_size, padded_vocab(c.model.vocab_size)};
}

}  // namespace gpt
