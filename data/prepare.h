// `gpt data prepare`: raw text (plain files, JSON lines) to GPT-2 token shards
// in the llm.c format, the way llm.c's dev/data/fineweb.py makes them.
//
//   gpt data prepare --out DIR INPUT... [--tokenizer DIR] [--name NAME]
//       [--shard-tokens N] [--val-every K] [--text-field F]
//       [--on-error skip|stop] [--threads N] [--quiet]
//
// Inputs: files, directories (recursed, files sorted bytewise, hidden names
// skipped, the output directory skipped) or glob patterns, in command-line
// order. `.jsonl` / `.json` files are JSON lines with one document per line in
// the string field F (default "text"; blank lines are ignored); any other file
// is one plain-text document.
//
// Each document becomes [<|endoftext|>] + encode(text) (fineweb.py's
// convention; "<|endoftext|>" inside the text is ordinary text). The 1-based
// document index i goes to val when i % K == 0 (K = 20 by default: 5%, as in
// /work/shared/data/english-mix; K = 0: no val split), else to train. Each
// split is one token stream cut into shards of exactly N tokens (the last one
// shorter; default N = 100,000,000 as in fineweb.py), so a document may span
// two shards, as in fineweb.py: the loaders read the shards as one stream.
// Shards are DIR/NAME_train_000000.bin ... and DIR/NAME_val_000000.bin ...
//
// Pipeline: a reader thread streams the inputs into batches of a few MB
// (bounded memory: at most three batches in flight plus the two open shards);
// all cores parse and tokenize a batch's documents (dynamic schedule); the
// calling thread appends the results in input order, so the bytes written do
// not depend on the thread count.
//
// Shards are written with write_shard (temp name `*.bin.tmp.<pid>`, fsync,
// rename) into a staging directory DIR/.NAME.prepare.<pid>/, and only a run
// that completes moves them into DIR: each gets its set words (an id hashed
// from the run's tokens, split, index, count; data/shard.h), all are renamed into place,
// then shards of the same NAME numbered beyond them (an earlier, bigger run)
// are removed, so DIR/NAME_train_*.bin is exactly this run's. A run killed
// before that leaves DIR as it was (SIGINT / SIGTERM exit 130; the staging
// directory of a killed run is removed at the next start); SIGINT and SIGTERM
// wait for the moves; a SIGKILL during them leaves a mix of two runs' shards
// that the trainer refuses by their set words, never trains on silently.
//
// Errors: an unreadable input, or a malformed JSON line (not JSON, not an
// object, field missing or not a string: message with file:line), is reported
// and skipped with --on-error skip (the default: a long run should not die on
// one bad line; the summary counts them), or ends the run with exit code 2
// with --on-error stop (DIR keeps what it had). No input at all, a missing
// tokenizer or no document is exit code 2.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace gpt {

struct PrepareOptions {
    std::string out_dir;
    std::vector<std::string> inputs;   // files, directories, glob patterns
    std::string tokenizer_dir;         // "" = $GPT_TOKENIZER_DIR, else the built-in files
    std::string name = "data";
    int64_t shard_tokens = 100000000;  // in [1, INT32_MAX]
    int64_t val_every = 20;            // 0 = no val split
    std::string text_field = "text";
    bool stop_on_error = false;        // --on-error stop
    int threads = 0;                   // 0 = all cores
    bool quiet = false;                // no progress line
};

struct PrepareStats {
    uint64_t docs_train = 0, docs_val = 0;
    uint64_t tokens_train = 0, tokens_val = 0;  // including one <|endoftext|> per document
    uint64_t text_bytes = 0;                    // document bytes after JSON unescaping
    uint64_t input_bytes = 0;                   // bytes read from the input files
    uint64_t files = 0;                         // input files read
    uint64_t skipped_lines = 0, skipped_files = 0;
    std::vector<std::string> train_shards, val_shards;  // paths written
    double seconds = 0;
};

// Runs the whole preparation. Progress and problems go to `log` (stderr in the
// CLI). Throws Error(BadInput) for bad options, no input, a missing tokenizer,
// no document, or (stop mode) the first bad input; Error(RunFailed) for I/O
// failures writing shards.
PrepareStats prepare(const PrepareOptions& opt, std::ostream& log);

// `gpt data prepare ARGS...` (args[0] is "prepare"): parses the flags, runs,
// prints the summary on stdout. Returns the exit code.
int prepare_main(const std::vector<std::string>& args);

// Extracts the string value of top-level `field` from one JSON object text
// into `out` (unescaped, UTF-8). Returns "" on success, else what is wrong
// ("not JSON: ...", "no field 'text'", "field 'text' is a number, not a string").
// The whole line is validated as JSON; a duplicate key takes the last value,
// as Python's json does.
std::string json_string_field(std::string_view line, std::string_view field, std::string& out);

}  // namespace gpt
