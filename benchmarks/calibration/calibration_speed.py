"""Process CPU time of one calibration run, split into phases by a profiler on the process clock.

The machine this was measured on is shared, so wall time says little: the run is on one thread and
every figure is process CPU time (`time.process_time`), phases from cProfile with that clock.

    OMP_NUM_THREADS=1 python benchmarks/calibration/calibration_speed.py --name se16 --layers 2 \\
        --windows 128 --seqlen 2048 --out results.jsonl -- expand --experts 16 --sparsity 0.7
    PYTHONPATH=OLD/src python benchmarks/calibration/calibration_speed.py ...   # an older checkout

SmolLM2's first `--layers` decoder layers (each layer costs the same whatever follows it; the last
one has no second forward pass, so use at least 2). Appends one JSON row to `--out`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

# phase -> (file suffix, function): cumulative CPU seconds of that function (the name is the same in
# the code before and after issue 21 part 4, so old checkouts are measured by the same rule).
PHASES = {
    "forward_layers": ("engine.py", "run_layer"),  # both passes, the hooks below included
    "observe": ("engine.py", "observe"),  # LayerCompressor.observe as the hooks call it, see below
    "hessian_stat": ("stats.py", "add"),  # HessianStat.add: SparseGPT's one, or each cluster's
    "cluster_stat": ("hessians.py", "add"),  # ClusterHessianStat.add (gather + the clusters' adds)
    "router_fit": ("router.py", "fit"),  # PCA + k-means (+ balance)
    "pca": ("router.py", "fit_pca"),
    "kmeans": ("router.py", "kmeans"),
    "route": ("router.py", "forward"),  # Router.forward: routing for the statistics
    "finish_layer": ("compressor.py", "finish_layer"),  # solves + building the replacements, see below
    "solve": ("sparsegpt.py", "sparsegpt_solve"),
    "build_experts": ("module.py", "build"),
    "expert_forward": ("module.py", "forward"),  # SparseExpertLinear.forward in the second pass
}


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    total = 0.0
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if func == name and file.endswith(suffix):
            total += ct
    return total


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from torch import nn

    import sparse_expansion
    from sparse_expansion.arch import decoder_layers
    from sparse_expansion.data import CalibrationSpec
    from sparse_expansion.methods import compress, make_config
    from sparse_expansion.models import load_model
    from sparse_expansion.prune import parse_sparsity

    torch.set_num_threads(1)
    opts = dict(zip(command[1::2], command[2::2]))
    method = "sparse_expansion" if command[0] == "expand" else opts.pop("--method")
    sparsity = parse_sparsity(opts.pop("--sparsity"))
    options = {k.lstrip("-").replace("-", "_"): int(v) if v.isdigit() else v for k, v in opts.items()}
    config = make_config(method, sparsity, **options)

    model, tokenizer = load_model("smollm2-135m")
    model.model.layers = nn.ModuleList(list(decoder_layers(model))[: args.layers])
    model.config.num_hidden_layers = args.layers
    windows = CalibrationSpec(windows=args.windows, seqlen=args.seqlen).sample(tokenizer, model)

    profiler = cProfile.Profile(time.process_time)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    profiler.enable()
    record = compress(model, windows, config, progress=False)
    profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stats = pstats.Stats(profiler)
    phases = {phase: round(_cumulative(stats, *where), 2) for phase, where in PHASES.items()}
    # the hooks call observe through functools.partial: count it by the compressors' own method
    phases["observe"] = round(_cumulative(stats, "compressors.py", "observe")
                              + _cumulative(stats, "compressor.py", "observe"), 2)
    phases["finish_layer"] = round(_cumulative(stats, "compressors.py", "finish_layer")
                                   + _cumulative(stats, "compressor.py", "finish_layer"), 2)
    phases["forward_without_hooks"] = round(phases["forward_layers"] - phases["observe"], 2)
    src = Path(sparse_expansion.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    row = {"name": args.name, "command": command, "layers": args.layers, "windows": args.windows,
           "seqlen": args.seqlen, "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
           "cpu_phases": phases, "engine_wall_seconds": record["seconds"], "src": str(src), "commit": commit,
           "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
