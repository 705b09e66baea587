// `gpt search report DIR`: report.md (baseline, best, every kept change with
// its gain and the spread it had to beat, the full trial table), progress.svg
// (trial number vs score, kept trials marked, the running best as a line, as
// autoresearch's progress.png) and best.yaml (the best config, runnable with
// `gpt train -c best.yaml`). Each file is written atomically.
#pragma once

#include <string>

namespace gpt::search {

void write_report(const std::string& dir);

}  // namespace gpt::search
