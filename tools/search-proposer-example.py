#!/usr/bin/env python3
"""An external proposer for `gpt search` (strategy: external), standard library only.

The protocol (search/README.md, "External proposer"): for every batch, gpt search
runs this command with one JSON object on stdin:

  {"protocol": 2, "want": N,
   "space": {"dimensions": {"optim.lr": {"type": "float", "min": 1e-05, "max": 0.1, "scale": "log"},
                            "schedule.type": {"type": "choice", "choices": ["cosine", "wsd"]}, ...},
             "constraints": [...], "settings": {"objective": ..., "budget_s": ..., ...}},
   "base_config": {"optim.lr": 0.0001, ...every config key...},
   "incumbent": {"id": 3, "config": {"optim.lr": "0.0005"}, "score": 1.9},
   "trials": [ ...every decided trial so far: its config, diff, status, stats.ratio, metrics.score... ]}

and reads one JSON object from stdout:

  {"candidates": [{"set": {"optim.lr": 0.0003}, "note": "why"}, ...]}   at most N, applied on top of the incumbent
  {"stop": true}                                                          ends the search

Each candidate is compared with the incumbent in paired runs; a trial's stats.ratio
is its time (or loss) divided by the incumbent's, below 1 is better. A config that
was already measured is not run again (the search records it as a duplicate), so
this example never proposes one: it compares configs by value (0, 0.0 and "0.0"
are one value). It perturbs the incumbent one or two dimensions at a time, like a
tiny evolution strategy, and stops after 50 trials. Replace it with Optuna's
ask/tell, an LLM agent, or a person editing a file.
"""
import json
import math
import random
import sys


def same(a, b):
    """Values compared as the search compares them: numbers by value, the rest as text."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def perturb(dim, value, rng):
    if dim["type"] == "choice":
        others = [c for c in dim["choices"] if not same(c, value)]
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


def full(config, dims, base):
    """Every dimension's value in a config (its override, else the base's)."""
    return {k: config.get(k, base.get(k)) for k in dims}


def main():
    req = json.load(sys.stdin)
    dims = req["space"]["dimensions"]
    base = req["base_config"]
    trials = req["trials"]
    if len(trials) >= 50 or not dims:
        json.dump({"stop": True}, sys.stdout)
        return
    rng = random.Random(len(trials))  # deterministic for a given journal
    incumbent = req["incumbent"]
    current = full(incumbent["config"], dims, base)
    measured = [full(t.get("config", {}), dims, base) for t in trials] + [current]
    out = []
    for _ in range(200):
        if len(out) >= max(1, int(req.get("want", 1))):
            break
        change = {}
        for key in rng.sample(sorted(dims), k=min(len(dims), rng.choice([1, 2]))):
            change[key] = perturb(dims[key], current[key], rng)
        proposal = dict(current)
        proposal.update(change)
        if any(all(same(proposal[k], m[k]) for k in dims) for m in measured):
            continue  # already measured (or proposed in this answer): the search would not run it again
        measured.append(proposal)
        out.append({"set": proposal, "note": "perturbs " + ", ".join(sorted(change)) + " of trial %s" % incumbent["id"]})
    json.dump({"candidates": out} if out else {"stop": True}, sys.stdout)


if __name__ == "__main__":
    main()
