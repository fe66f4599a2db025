"""Where FPE's time goes, measured on this machine: the numbers behind the code's remarks on speed.

Usage: .venv/bin/python benchmarks/fpe/timings.py [--skip-embeddings]

- MiniLM embedding rate (texts/s), and what that means for a real-data task's 3,200 texts
  (embeddings.py: the subsets are small because embedding is the slow part; cached after once);
- DNF example sampling against the number of clauses: the fraction of random inputs that are
  negatives, and the time to sample the 4,000 + 4,000 examples of one seed, up to and past the
  limit studies.max_clauses sets;
- one seed of the point study (dense + every rule), the unit every DNF study repeats.
"""

import argparse
import time

import torch

from sparse_expansion.fpe import dnf
from sparse_expansion.fpe.run import run_dnf
from sparse_expansion.fpe.studies import POINT_RULES, DNFConfig, max_clauses

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--skip-embeddings", action="store_true", help="skip the MiniLM timing (needs the model package)")
args = parser.parse_args()
torch.set_num_threads(1)

if not args.skip_embeddings:
    from sparse_expansion.fpe.embeddings import PER_CLASS, embed, play_lines

    texts = play_lines()[0][:256]
    embed(texts[:16], progress=False)  # load the model once before timing
    t0 = time.perf_counter()
    embed(texts, progress=False)
    rate = len(texts) / (time.perf_counter() - t0)
    print(f"MiniLM embeddings: {rate:.0f} texts/s -> {8 * PER_CLASS / rate:.0f} s for one task's "
          f"{8 * PER_CLASS} texts (once; cached afterwards)")

cfg = DNFConfig()
for m in (8, 16, 32, max_clauses(cfg.k), max_clauses(cfg.k) + 7):  # the last one is refused by `fpe`
    task = dnf.make_task(cfg.n_inputs, m, cfg.k, seed=1000)
    bits = torch.randint(0, 2, (100_000, cfg.n_inputs), generator=torch.Generator().manual_seed(0))
    negatives = float((task.label(bits) == 0).float().mean())
    t0 = time.perf_counter()
    dnf.sample(task, cfg.n_train, 2000)
    dnf.sample(task, cfg.n_test, 3000)
    print(f"DNF sampling, {m:2d} clauses: {negatives:.4f} of random inputs are negatives, "
          f"{time.perf_counter() - t0:.2f} s for {cfg.n_train} + {cfg.n_test} examples")

t0 = time.perf_counter()
run_dnf(cfg, POINT_RULES, seed=0)
print(f"point study, one seed (dense + {len(POINT_RULES)} rules, {cfg.warmup_epochs}+{cfg.post_epochs} epochs): "
      f"{time.perf_counter() - t0:.1f} s")
