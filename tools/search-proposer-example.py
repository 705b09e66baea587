#!/usr/bin/env python3
"""An external proposer for `gpt search` (strategy: external), standard library only.

The protocol (search/README.md, "External proposer"): for every batch, gpt search
runs this command with one JSON object on stdin:

  {"protocol": 1, "want": N,
   "space": {"dimensions": {"optim.lr": {"type": "float", "min": 1e-05, "max": 0.1, "scale": "log"},
                            "schedule.type": {"type": "choice", "choices": ["cosine", "wsd"]}, ...},
             "constraints": [...], "settings": {"objective": ..., "budget_s": ..., ...}},
   "base_config": {"optim.lr": 0.0001, ...every config key...},
   "baseline": {"id": 3, "config": {"optim.lr": "0.0005"}, "scores": [...], "mean": ..., "noise_sd": ...},
   "journal": [ ...every trial record so far, as in journal.jsonl... ]}

and reads one JSON object from stdout:

  {"candidates": [{"set": {"optim.lr": 0.0003}, "note": "why"}, ...]}   at most N, applied on top of the baseline
  {"stop": true}                                                          ends the search

Scores are lower-is-better (time to target in seconds, or the loss at the budget).
This example perturbs the best configuration seen so far, one or two dimensions at
a time, like a tiny evolution strategy, and stops after 50 candidates. Replace it with
Optuna's ask/tell, an LLM agent, or a person editing a file.
"""
import json
import math
import random
import sys


def perturb(dim, value, rng):
    if dim["type"] == "choice":
        others = [c for c in dim["choices"] if str(c) != str(value)]
        return rng.choice(others) if others else value
    lo, hi = float(dim["min"]), float(dim["max"])
    log = dim.get("scale") == "log"
    to_u = (lambda v: (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))) if log else (lambda v: (v - lo) / (hi - lo))
    from_u = (lambda u: math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))) if log else (lambda u: lo + u * (hi - lo))
    try:
        u = to_u(float(value))
    except (TypeError, ValueError):
        u = rng.random()
    step = rng.choice([-1, 1]) * rng.uniform(0.05, 0.3)
    if not 0.0 <= u + step <= 1.0:
        step = -step  # bounce off the edge of the range
    v = from_u(min(1.0, max(0.0, u + step)))
    if dim["type"] != "int":
        return float("%.4g" % v)
    # An integer must move by at least one, or the candidate would repeat its parent.
    old = int(round(float(value))) if value is not None else None
    new = int(round(v))
    if new == old:
        new = old + (1 if step > 0 else -1)
        if not lo <= new <= hi:
            new = old - (1 if step > 0 else -1)
    return new


def main():
    req = json.load(sys.stdin)
    dims = req["space"]["dimensions"]
    journal = req["journal"]
    candidates = [t for t in journal if t.get("role") == "candidate"]
    if len(candidates) >= 50 or not dims:
        json.dump({"stop": True}, sys.stdout)
        return
    rng = random.Random(len(journal))  # deterministic for a given journal
    # The parent: the best scored trial so far (the baseline when nothing beat it).
    scored = [t for t in journal if t.get("metrics", {}).get("score") is not None and t.get("status") in ("keep", "discard")]
    best = min(scored, key=lambda t: t["metrics"]["score"]) if scored else None
    parent = dict(req["baseline"]["config"])
    if best is not None:
        parent.update(best.get("config", {}))
    current = {k: parent.get(k, req["base_config"].get(k)) for k in dims}
    out = []
    for _ in range(max(1, int(req.get("want", 1)))):
        change = {}
        for key in rng.sample(sorted(dims), k=min(len(dims), rng.choice([1, 2]))):
            change[key] = perturb(dims[key], current[key], rng)
        # The answer is applied on top of the current baseline: carry the parent's values too.
        proposal = {k: v for k, v in parent.items() if k in dims}
        proposal.update(change)
        out.append({"set": proposal, "note": "perturbs " + ", ".join(sorted(change)) + " of trial %s" % (best["id"] if best else "base")})
    json.dump({"candidates": out}, sys.stdout)


if __name__ == "__main__":
    main()
