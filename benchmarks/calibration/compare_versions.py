"""Do two checkouts calibrate to the same model? Each runs in its own process (its `src` first on the
path) on the first layers of SmolLM2; the compressed MLPs are compared tensor by tensor.

    python benchmarks/calibration/compare_versions.py --old /tmp/old/src --new src \\
        --layers 2 --windows 16 --seqlen 512 -- expand --experts 16 --sparsity 0.7

`git archive <commit> src | tar -x -C /tmp/old` gives an older checkout's `src`. Prints, per tensor,
whether it is bit-equal and else the largest difference and the share of differing zeros (masks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_WORKER = r"""
import sys, torch
from safetensors.torch import save_file
from torch import nn
from sparse_expansion.arch import decoder_layers
from sparse_expansion.data import CalibrationSpec
from sparse_expansion.methods import compress, make_config
from sparse_expansion.models import load_model
from sparse_expansion.prune import parse_sparsity
layers, windows, seqlen, out, method, sparsity = sys.argv[1:7]
options = dict(zip(sys.argv[7::2], sys.argv[8::2]))
torch.set_num_threads(1)
model, tok = load_model("smollm2-135m")
model.model.layers = nn.ModuleList(list(decoder_layers(model))[: int(layers)])
model.config.num_hidden_layers = int(layers)
calib = CalibrationSpec(windows=int(windows), seqlen=int(seqlen)).sample(tok, model)
config = make_config(method, parse_sparsity(sparsity), **{k: type_(v) for k, v in options.items()
                     for type_ in [int if v.lstrip("-").isdigit() else float if "." in v else str]})
compress(model, calib, config, progress=False)
tensors = {}
for i, layer in enumerate(decoder_layers(model)):
    for name, module in layer.mlp.named_children():
        if hasattr(module, "dense_experts"):
            tensors[f"{i}.{name}.experts"] = module.dense_experts()
            for b, value in module.router.named_buffers():
                tensors[f"{i}.{name}.router.{b}"] = value
        elif isinstance(module, nn.Linear):
            tensors[f"{i}.{name}.weight"] = module.weight.detach()
save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, out)
"""


def run(src: str, out: Path, args, command: list[str]) -> None:
    method = {"expand": "sparse_expansion", "prune": None}[command[0]]
    rest = command[1:]
    opts = dict(zip(rest[::2], rest[1::2]))
    if method is None:
        method = opts.pop("--method")
    sparsity = opts.pop("--sparsity")
    flat = [x for k, v in opts.items() for x in (k.lstrip("-").replace("-", "_"), v)]
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", _WORKER, str(args.layers), str(args.windows), str(args.seqlen), str(out),
                    method, sparsity, *flat], env=env, check=True)


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the older checkout's src folder")
    parser.add_argument("--new", default=str(Path(__file__).resolve().parents[2] / "src"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "old.safetensors", Path(tmp) / "new.safetensors"]
        for src, path in zip((args.old, args.new), paths):
            run(src, path, args, command)
        old, new = (load_file(str(p)) for p in paths)
    rows = []
    for key in sorted(old):
        a, b = old[key], new[key]
        row = {"tensor": key, "equal": bool(a.shape == b.shape and (a == b).all())}
        if not row["equal"] and a.shape == b.shape:
            row["max_abs_diff"] = float((a - b).abs().max())
            row["max_abs"] = float(a.abs().max())
            row["zeros_differ"] = float(((a == 0) != (b == 0)).float().mean())
        rows.append(row)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"tensors": len(rows), "bit_equal": sum(r["equal"] for r in rows)}))


if __name__ == "__main__":
    main()
