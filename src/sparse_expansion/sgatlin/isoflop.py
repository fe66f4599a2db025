"""Isoflop study: at each training-FLOP budget, several scales per FFN type; who reaches the lowest
validation loss? Plus the activation ablation (identity vs GELU) of sgatlin at one budget.

Each run is a fresh subprocess (`python -m sparse_expansion.sgatlin.isoflop RUN.json`) with one
torch thread, so its peak memory is its own and `--jobs` runs can share the cores. Finished runs
are kept in a work folder beside --out, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..io import atomic_output_dir, check_output_dir, read_json, write_json

MIN_STEPS = 20  # fewer optimizer steps than this is not a training run worth plotting


@dataclass
class RunSpec:
    name: str
    ffn: str
    scale: float
    budget: float
    overrides: dict[str, Any]
    group: str  # "isoflop" or "ablation"


def check_study(budgets: list[float], ffns: list[str], scales: list[float],
                ablation_budget: float | None, jobs: int, batch_size: int, seq_len: int) -> None:
    """Refuse a study that cannot run, before any data is prepared."""
    import math

    from .ffn_types import FFN_TYPES
    from .transformer import config_for_scale

    bad = [f for f in ffns if f not in FFN_TYPES]
    if bad or not ffns:
        raise UsageError(f"unknown --ffn {', '.join(bad) or '(none)'}; choose from "
                         f"{', '.join(FFN_TYPES)}")
    if not budgets or not scales:
        raise UsageError("need at least one budget and one scale")
    for budget in [*budgets, *([] if ablation_budget is None else [ablation_budget])]:
        if not (math.isfinite(budget) and budget > 0):
            raise UsageError(f"budgets must be positive numbers (got {budget})")
    for scale in scales:
        try:
            config_for_scale(ffns[0], scale, vocab_size=2)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for value, flag in ((jobs, "--jobs"), (batch_size, "--batch-size"), (seq_len, "--seq-len")):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1 (got {value})")


def plan_runs(budgets: list[float], ffns: list[str], scales: list[float],
              ablation_budget: float | None, batch_size: int, seq_len: int
              ) -> tuple[list[RunSpec], list[str]]:
    """Every (budget, ffn, scale) with at least MIN_STEPS steps; returns (runs, skipped notes).

    Steps do not depend on the vocabulary (FLOPs per token leave out the embeddings), so the
    study is planned before its data exists.
    """
    from .training import LMTrainConfig, check_config

    runs, skipped = [], []

    def add(ffn, scale, budget, overrides, group, tag=""):
        cfg = LMTrainConfig(ffn=ffn, scale=scale, budget=budget, batch_size=batch_size,
                          seq_len=seq_len, ffn_overrides=overrides)
        try:
            steps = check_config(cfg)
        except UsageError:  # a budget below one step is a skip, not an error
            steps = 0
        name = f"{ffn}{tag}_s{scale:g}_b{budget:.0e}".replace("+", "")
        if steps < MIN_STEPS:
            skipped.append(f"{name}: {steps} steps < {MIN_STEPS}")
            return
        runs.append(RunSpec(name, ffn, scale, budget, overrides, group))

    for budget in budgets:
        for ffn in ffns:
            for scale in scales:
                add(ffn, scale, budget, {}, "isoflop")
    if ablation_budget is not None:
        for scale in scales:
            if ablation_budget not in budgets or "sgatlin" not in ffns:
                add("sgatlin", scale, ablation_budget, {}, "ablation")
            add("sgatlin", scale, ablation_budget, {"activation": "gelu"}, "ablation", "-gelu")
    return runs, skipped


def _launch(spec: RunSpec, work: Path, data_dir: Path, batch_size: int, seq_len: int,
            seed: int, device: str, autocast: str | None) -> subprocess.Popen:
    job = {"ffn": spec.ffn, "scale": spec.scale, "budget": spec.budget,
           "overrides": spec.overrides, "batch_size": batch_size, "seq_len": seq_len,
           "seed": seed, "data_dir": str(data_dir), "out": str(work / "runs" / spec.name),
           "device": device, "autocast": autocast}
    (work / "jobs").mkdir(parents=True, exist_ok=True)
    job_file = work / "jobs" / f"{spec.name}.json"
    job_file.write_text(json.dumps(job))
    log = open(work / "jobs" / f"{spec.name}.log", "w")  # noqa: SIM115 - closed by the child exit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "sparse_expansion.sgatlin.isoflop",
                             str(job_file)], stdout=log, stderr=subprocess.STDOUT, env=env)


def run_study(out: str | Path, budgets: list[float], ffns: list[str], scales: list[float],
              ablation_budget: float | None = None, jobs: int = 1, batch_size: int = 8,
              seq_len: int = 128, seed: int = 0, data_dir: str | Path | None = None,
              device: str = "cpu", autocast: str | None = None) -> list[dict[str, Any]]:
    """Run (or finish) the study; write results.json, table.md, isoflop.png, ablation.md to out.
    Every run trains on `device` (runs share it), with `autocast` (a dtype name) if given."""
    from .data import check_token_data, prepare_data, save_token_data

    out = check_output_dir(out)
    check_study(budgets, ffns, scales, ablation_budget, jobs, batch_size, seq_len)
    if data_dir is not None:
        check_token_data(data_dir)
    runs, skipped = plan_runs(budgets, ffns, scales, ablation_budget, batch_size, seq_len)
    if not runs:
        raise UsageError(f"every run has fewer than {MIN_STEPS} steps ({'; '.join(skipped)}); "
                         "raise the budgets or lower the scales")
    work = out.parent / f".{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    data_path = Path(data_dir) if data_dir else work / "data"
    if not (data_path / "val.npy").is_file():
        print(f"fitting the tokenizer and encoding the corpora into {data_path}", flush=True)
        save_token_data(prepare_data(), data_path)
    for note in skipped:
        print(f"skipped {note}", flush=True)
    todo = [r for r in runs if not (work / "runs" / r.name / "metrics.json").is_file()]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done, {jobs} at a time", flush=True)
    running: list[tuple[RunSpec, subprocess.Popen, float]] = []
    t_start = time.time()
    while todo or running:
        while todo and len(running) < jobs:
            spec = todo.pop(0)
            running.append((spec, _launch(spec, work, data_path, batch_size, seq_len, seed, device, autocast),
                            time.time()))
        time.sleep(0.5)
        for item in list(running):
            spec, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                for _, other, _ in running:
                    other.kill()
                raise RuntimeError(f"run {spec.name} failed; see {work}/jobs/{spec.name}.log")
            m = read_json(work / "runs" / spec.name / "metrics.json")
            print(f"[{time.time() - t_start:6.0f}s] {spec.name}: val {m['val_loss']:.3f} "
                  f"({m['steps']} steps, {m['tokens_per_second']:.0f} tok/s, "
                  f"{time.time() - t0:.0f}s)", flush=True)
    results = []
    for spec in runs:
        m = read_json(work / "runs" / spec.name / "metrics.json")
        m = {k: v for k, v in m.items() if k != "loss_history"}
        m.update(name=spec.name, group=spec.group,
                 activation=m["model"]["ffn_kwargs"].get("activation"))
        results.append(m)
    with atomic_output_dir(out) as tmp:
        write_json(tmp / "results.json", {"runs": results, "skipped": skipped,
                                          "budgets": budgets, "scales": scales,
                                          "batch_size": batch_size, "seq_len": seq_len})
        (tmp / "table.md").write_text(results_table(results) + "\n\n" + winners(results) + "\n")
        plot_isoflop(results, tmp / "isoflop.png")
        if ablation_budget is not None:
            (tmp / "ablation.md").write_text(ablation_table(results, ablation_budget) + "\n")
        shutil.move(str(work / "runs"), str(tmp / "runs"))
        shutil.move(str(work / "jobs"), str(tmp / "logs"))
        if data_dir is None:
            shutil.move(str(data_path), str(tmp / "data"))
    shutil.rmtree(work, ignore_errors=True)
    return results


def results_table(results: list[dict[str, Any]]) -> str:
    head = ("| budget | ffn | scale | params | fwd FLOPs/token | steps | tokens | train loss "
            "| val loss | tokens/s | peak RSS MB | wall s |\n|" + "---|" * 12)
    rows = [head]
    for r in sorted(results, key=lambda r: (r["group"], r["budget"], r["ffn"], r.get("activation") or "",
                                            r["scale"])):
        ffn = r["ffn"] if r["ffn"] != "sgatlin" or r["activation"] == "identity" \
            else f"sgatlin ({r['activation']})"
        rows.append(
            f"| {r['budget']:.0e} | {ffn} | {r['scale']:g} | {r['params']:,} | "
            f"{r['flops_per_token']:,} | {r['steps']} | {r['tokens']:,} | {r['train_loss']:.3f} | "
            f"**{r['val_loss']:.3f}** | {r['tokens_per_second']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['wall_seconds']:.0f} |")
    return "\n".join(rows)


def best_per_budget(results: list[dict[str, Any]]) -> dict[float, dict[str, dict[str, Any]]]:
    """{budget: {ffn: best run}} over the isoflop grid (identity sgatlin)."""
    best: dict[float, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r["group"] != "isoflop":
            continue
        slot = best.setdefault(r["budget"], {})
        if r["ffn"] not in slot or r["val_loss"] < slot[r["ffn"]]["val_loss"]:
            slot[r["ffn"]] = r
    return best


def winners(results: list[dict[str, Any]]) -> str:
    lines = ["| budget | " + " | ".join(["best val loss (scale) per FFN", "winner"]) + " |",
             "|---|---|---|"]
    for budget, slot in sorted(best_per_budget(results).items()):
        cells = ", ".join(f"{f} {r['val_loss']:.3f} (s={r['scale']:g})"
                          for f, r in sorted(slot.items(), key=lambda kv: kv[1]["val_loss"]))
        win = min(slot.values(), key=lambda r: r["val_loss"])["ffn"]
        lines.append(f"| {budget:.0e} | {cells} | {win} |")
    return "\n".join(lines)


def ablation_table(results: list[dict[str, Any]], budget: float) -> str:
    rows = ["| scale | identity val loss | gelu val loss |", "|---|---|---|"]
    by: dict[float, dict[str, float]] = {}
    for r in results:
        if r["ffn"] == "sgatlin" and r["budget"] == budget:
            by.setdefault(r["scale"], {})[r["activation"]] = r["val_loss"]
    for scale, acts in sorted(by.items()):
        ident, gelu = acts.get("identity"), acts.get("gelu")
        rows.append(f"| {scale:g} | {ident:.3f} | {gelu:.3f} |" if ident and gelu
                    else f"| {scale:g} | {ident} | {gelu} |")
    return "\n".join(rows)


def plot_isoflop(results: list[dict[str, Any]], path: Path) -> None:
    """Validation loss against parameters: one curve per (budget, FFN type)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .ffn_types import FFN_TYPES

    budgets = sorted({r["budget"] for r in results if r["group"] == "isoflop"})
    markers = "osD^v<>"
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for bi, budget in enumerate(budgets):
        for ffn, kind in FFN_TYPES.items():
            color = kind.color
            pts = sorted((r["params"], r["val_loss"], r["scale"]) for r in results
                         if r["group"] == "isoflop" and r["budget"] == budget and r["ffn"] == ffn)
            if not pts:
                continue
            for ax, xi in ((axes[0], 0), (axes[1], 2)):
                ax.plot([p[xi] for p in pts], [p[1] for p in pts], color=color,
                        linestyle=styles[bi % len(styles)], marker=markers[bi % len(markers)],
                        label=f"{ffn} @ {budget:.0e}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("parameters")
    axes[1].set_xlabel("scale s (d = 128 s, layers = 2 s)")
    for ax in axes:
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Isoflop: validation loss at equal training FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _worker(job_file: str) -> int:
    """One run, in its own process (see module docstring)."""
    import torch

    from .data import load_token_data
    from .training import LMTrainConfig, train

    torch.set_num_threads(1)
    job = json.loads(Path(job_file).read_text())
    cfg = LMTrainConfig(ffn=job["ffn"], scale=job["scale"], budget=job["budget"],
                      batch_size=job["batch_size"], seq_len=job["seq_len"], seed=job["seed"],
                      ffn_overrides=job["overrides"])
    out = Path(job["out"])
    if out.exists():
        shutil.rmtree(out)  # a half-written run from an interrupted study
    with atomic_output_dir(out) as tmp:
        autocast = getattr(torch, job["autocast"]) if job.get("autocast") else None
        train(cfg, load_token_data(job["data_dir"]), tmp, progress=False, device=job.get("device", "cpu"),
              autocast=autocast)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
