"""Run an FPE study: `run_study(FPEStudyConfig(...), out=FOLDER)` is the library call behind `fpe`.

It checks everything that needs no data (the config and `out`) before any training, trains every
network of the study, and, given `out`, writes the folder atomically:
- results.json: the settings, the command that reproduces the run, one entry per trained network
  (rule, seed, test_accuracy, nonzeros, hidden, alpha, polysemanticity before and after, ...);
- report.md and the PNG plots it shows;
- with save_models, models/NNNN-RULE-hH-dD-sS/: each network as an artifact (artifact.py, kind
  "fpe_mlp"), loadable with `sparse_expansion.models.load_model(DIR)`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import dnf
from . import report as rep
from .mlp import MaskedMLP, MLPConfig, MLPTrainConfig
from .schedule import schedule
from .studies import GAIN_FIT_STUDIES, TASKS, DNFConfig, FPEStudyConfig, dnf_study, gain_vs_load

Plot = tuple[str, Callable[[Path], None]]  # (file name, draw into that path)


@dataclass
class StudyResult:
    results: dict[str, Any]  # what results.json holds
    report: str  # report.md
    plots: list[Plot] = field(default_factory=list)
    models: list[tuple[str, MaskedMLP, dict[str, Any]]] = field(default_factory=list)  # (folder, net, record)

    def save(self, out: str | Path) -> None:
        """Write everything into the new folder `out`, renamed into place only when complete."""
        from ..artifact import save_artifact
        from ..io import atomic_output_dir, write_json

        with atomic_output_dir(out) as tmp:
            for name, model, record in self.models:
                save_artifact(tmp / "models" / name, model, record=record)
            for name, draw in self.plots:
                draw(tmp / name)
            write_json(tmp / "results.json", self.results)
            (tmp / "report.md").write_text(self.report)


def run_study(config: FPEStudyConfig, *, out: str | Path | None = None, progress: bool = True) -> StudyResult:
    """Check `config` and `out`, run the study, save it to `out` (when given); returns the result."""
    from ..io import check_output_dir

    config.check()
    if out is not None:
        check_output_dir(out)
    bar = _progress_bar if progress else None
    with _threads(config.threads):
        if config.is_dnf:
            result = _run_dnf(config, bar)
        else:
            result = _run_real(config, bar)
    result.results["command"] = config.command_line(str(out) if out is not None else "OUT")
    _collect_models(result, config)
    if out is not None:
        result.save(out)
    return result


def _progress_bar(**kwargs: Any) -> Any:
    from ..progress import progress_bar

    return progress_bar(**kwargs)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _collect_models(result: StudyResult, config: FPEStudyConfig) -> None:
    """Take the trained networks out of the runs; keep them as artifacts to save if asked."""
    for i, run in enumerate(result.results["runs"]):
        model = run.pop("_model", None)
        if model is None or not config.save_models:
            continue
        name = f"{i:04d}-{run['rule']}-h{run['hidden']}-d{run['depth']}-s{run['seed']}"
        run["model_dir"] = f"models/{name}"
        facts = {k: v for k, v in run.items() if k != "model_dir"}
        record = {"method": "fpe", "task": config.task, "command": result.results["command"], **facts}
        result.models.append((name, model, record))


# -------------------------------------------------------------------------------------- DNF


def run_dnf(config: DNFConfig, rules: Sequence[str], seed: int, keep_models: bool = False) -> list[dict]:
    """One seed of one DNF setting: the formula, the data and the init all follow the seed."""
    task = dnf.make_task(config.n_inputs, config.clauses, config.k, seed=1000 + seed)
    data = (*dnf.sample(task, config.n_train, 2000 + seed), *dnf.sample(task, config.n_test, 3000 + seed))
    runs = schedule(
        MLPConfig(config.n_inputs, (config.neurons,), 1),
        data,
        rules,
        config.alpha,
        seed,
        config.warmup_epochs,
        config.post_epochs,
        MLPTrainConfig(lr=config.lr, batch_size=config.batch_size),
        clauses=task.clauses,
        layers=[0],
        keep_models=keep_models,
    )
    for run in runs:
        run.update(clauses=config.clauses, n_inputs=config.n_inputs, k=config.k, config=asdict(config))
    return runs


def run_grid(
    configs: Sequence[DNFConfig],
    rules: Sequence[str],
    seeds: Sequence[int],
    progress: Callable | None = None,
    keep_models: bool = False,
) -> list[dict]:
    """Every config × seed."""
    runs = []
    jobs = [(c, s) for c in configs for s in seeds]
    bar = progress(total=len(jobs), desc="DNF runs") if progress else None
    for cfg, seed in jobs:
        runs.extend(run_dnf(cfg, rules, seed, keep_models))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def _run_dnf(config: FPEStudyConfig, progress: Callable | None) -> StudyResult:
    base = config.dnf_base()
    study = config.study or "single"
    seeds = list(range(config.seeds))
    runs: list[dict] = []
    walls: dict[str, float] = {}
    plots: list[Plot] = []
    sections = []
    for name in config.parts():
        configs, study_rules, vary = dnf_study(name, base, config.rules)
        t0 = time.perf_counter()
        study_runs = run_grid(configs, study_rules, seeds, progress=progress, keep_models=config.save_models)
        walls[name] = time.perf_counter() - t0
        for r in study_runs:
            r["study"] = name
        runs.extend(study_runs)
        title = f"FPE on DNF, study '{name}' ({len(seeds)} seeds)"
        plots.append((f"dnf_{name}.png", lambda path, rr=study_runs, v=vary, t=title: rep.plot_dnf(rr, v, path, t)))
        sections.append(rep.dnf_section(name, study_runs, vary, walls[name]))
    results = {"task": config.task, "study": study, "settings": asdict(base), "seeds": seeds, "wall_seconds": walls,
               "runs": runs}
    if set(GAIN_FIT_STUDIES) <= set(config.parts()):
        fit = gain_vs_load(_once_per_setting(r for r in runs if r["study"] in GAIN_FIT_STUDIES))
        results["gain_vs_load"] = fit
        plots.append(("dnf_gain_vs_load.png", lambda path, f=fit: rep.plot_gain(f, path)))
        sections.append(rep.gain_section(fit))
    report = "\n".join([rep.dnf_header(study, base, seeds), *sections])
    return StudyResult(results, report, plots)


def _once_per_setting(runs: Any) -> list[dict]:
    """The (8 clauses, 8 neurons) setting appears in both sweeps: count it once."""
    seen, unique = set(), []
    for r in runs:
        key = (r["clauses"], r["hidden_parent"], r["seed"], r["rule"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


# -------------------------------------------------------------------------------- real data


def _run_real(config: FPEStudyConfig, progress: Callable | None) -> StudyResult:
    from .real import run_real

    cfg = config.real_config()
    rules = list(config.rules_to_run())
    seeds = list(range(config.seeds))
    t0 = time.perf_counter()
    runs = run_real(cfg, rules, seeds, progress=progress, keep_models=config.save_models)
    wall = time.perf_counter() - t0
    matches = rep.real_matches(runs)
    results = {"task": config.task, "settings": asdict(cfg), "seeds": seeds, "rules": rules,
               "wall_seconds": {config.task: wall}, "runs": runs, "dense_match": matches}
    plots: list[Plot] = [(f"{config.task}.png", lambda path: rep.plot_real(runs, path, config.task))]
    report = rep.real_report(config.task, TASKS[config.task].description, cfg, rules, seeds, wall, runs, matches)
    return StudyResult(results, report, plots)
