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

// The most CPU threads a run (run.threads) or `gpt data prepare --threads`
// may ask for: far beyond the cores of any one machine, below the point where
// OpenMP's thread creation fails.
constexpr int kMaxThreads = 1024;

struct ModelConfig {
    std::string preset;     // "" or one of d12 d24 d36 d48 tiny nano: fills the shape
    int n_layer = 12;
    int n_head = 12;
    int n_embd = 768;
    int seq_len = 1024;     // maximum context length (rows of wpe)
    int vocab_size = 50257; // real vocabulary; padded to a multiple of 128 internally
    std::string init;       // starting weights: "" = random (run.seed); a model file, checkpoint/run dir or hf:DIR
    // Architecture choices; the defaults are GPT-2 (see model/layout.h Arch).
    std::string pos_emb = "learned";  // learned | rope
    double rope_base = 10000;
    std::string norm = "layernorm";   // layernorm | rmsnorm
    bool norm_params = true;          // learnable norm gains (and LayerNorm biases)
    bool qk_norm = false;
    std::string activation = "gelu";  // gelu | relu2
    bool bias = true;                 // biases of the linear layers and LayerNorm
    bool tied_head = true;            // false: a separate lm_head
    double head_init_std = 0.02;      // untied lm_head init N(0, std), 0 = zeros
    double logit_softcap = 0;         // 0 = off
    bool zero_init_proj = false;      // attprojw and fcprojw start at zero
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
    std::string type = "adamw"; // adamw | muon (Muon for the hidden matrices, AdamW for the rest)
    double lr = 6e-4;           // AdamW's peak lr (the matrices under adamw; gains and biases always)
    double embed_lr = 0;        // AdamW lr of wte and wpe (wte is also the head when tied); 0 = lr
    double head_lr = 0;         // AdamW lr of an untied lm_head; 0 = lr
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;  // AdamW's, on the 2-D tensors it updates
    double grad_clip = 1.0;     // 0 disables clipping
    double muon_lr = 0.02;      // Muon's peak lr (the hidden matrices under muon)
    double muon_momentum = 0.95;
    bool muon_nesterov = true;
    int muon_ns_steps = 5;
    double muon_weight_decay = 0;  // decoupled: p -= muon_lr * wd * p
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
    bool grad_accum_f32 = false;   // sum micro-batch gradients in an f32 buffer (train/step.h)
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
    long val_every_tokens = 0;     // evaluate whenever the tokens trained cross a multiple of N (0 = val_every)
    int val_batches = 8;           // batches per evaluation (when val_tokens is 0)
    long val_tokens = 0;           // a fixed validation set: the first val_tokens / T_val windows of the val stream, 0 = val_batches x B x T
    int val_seq_len = 0;           // T_val, the validation window, <= the training T; 0 = the training T
    std::string step_clock = "wall";  // wall | median | cpu: what one step charges to the budget and time-to-target clock
    int log_every = 1;             // JSONL step records every N steps
    int checkpoint_every = 0;      // 0 = only at the end, -1 = never (except when interrupted)
    int sample_every = 0;          // print a generated sample every N steps, 0 = never
    int sample_tokens = 64;        // tokens per sample
    std::string out_dir = "runs/latest";
    // A step whose loss or gradient norm is NaN/inf: "stop" ends the run
    // (exit 1, no checkpoint of ruined weights), "skip_step" skips its update.
    std::string on_nonfinite = "stop";
    // llm.c's outlier skip: an update whose loss (or gradient norm) z-score
    // over the last 128 steps exceeds this is skipped; 0 = off.
    double skip_update_lossz = 0;
    double skip_update_gradz = 0;
    std::string hellaswag;         // HellaSwag validation jsonl for run.hellaswag_every ("" = none)
    int hellaswag_every = 0;       // evaluate HellaSwag every N steps (and at the end), 0 = never
    int hellaswag_examples = 0;    // examples per HellaSwag evaluation, 0 = all
};

struct Config {
    ModelConfig model;
    DataConfig data;
    OptimConfig optim;
    ScheduleConfig schedule;
    RunConfig run;
    std::map<std::string, std::string> kernels;  // filled by the CUDA and search issues
    std::string source;                          // file the config came from ("" = defaults)
    std::vector<std::string> notes;              // adjustments made while loading, printed at start (not part of the YAML)
};

// What a config is loaded for: training needs a stop condition and a decay
// horizon; evaluating, sampling or printing a config does not.
enum class ConfigUse { train, inspect };

// Loads a YAML file (path may be empty: defaults only), applies `key=value`
// overrides in order, fills presets (an explicit shape key, from the file or
// --set, wins over a preset from either) and validates. Throws Error(BadInput)
// naming the key, the file and line, and the closest valid key.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, ConfigUse use = ConfigUse::train);

// Parses YAML text (used for checkpoints, which embed the effective config).
Config parse_config_text(const std::string& yaml, const std::string& origin,
                         const std::vector<std::string>& overrides = {}, ConfigUse use = ConfigUse::train);

// Empty when the config can train; else why not (no stop condition, no decay horizon).
std::string training_problem(const Config& c);

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
// The model.* initialisation keys.
inline InitOptions init_options(const Config& c) { return InitOptions{c.model.zero_init_proj, c.model.head_init_std}; }
// The model.* architecture keys as the model's Arch.
Arch model_arch(const ModelConfig& m);
inline ModelShape model_shape(const Config& c) {
    return ModelShape{c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.seq_len, c.model.vocab_size, padded_vocab(c.model.vocab_size),
                      model_arch(c.model)};
}

}  // namespace gpt
