"""What each FPE study is: the tasks, the DNF study table, and `FPEStudyConfig`, one `fpe` run as
plain values, with every check that needs no data (run.py runs it).

Light on purpose: the CLI reads TASKS, STUDIES and the rule registry for its choices and help,
and checks a FPEStudyConfig, before torch is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import UsageError
from .rules import DENSE, RULES, check_rules, known

DEFAULT_ALPHA = 2
DEFAULT_DEPTH = 3  # real data: hidden layers of the deeper MLP


@dataclass(frozen=True)
class Task:
    name: str
    inputs: int  # input features: a rule that deals inputs needs at least alpha of them
    has_clauses: bool  # DNF: the clause rule can read them
    summary: str  # one line for --help
    description: str = ""  # the report's description of the data (real-data tasks)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("dnf", 32, True, "Boolean DNF formulas over 32 inputs (the studies below)"),
    Task("plays", 384, False, "MiniLM embeddings of Shakespeare lines, label = play",
         "frozen MiniLM (all-MiniLM-L6-v2) embeddings of 400 spoken lines from each of 8 plays, label = play"),
    Task("bible", 384, False, "MiniLM embeddings of KJV verses, label = book",
         "frozen MiniLM (all-MiniLM-L6-v2) embeddings of 400 KJV verses from each of 8 books, label = book"),
    Task("digits", 64, False, "sklearn's 8x8 digits, label = digit",
         "sklearn digits (1,797 8×8 images, pixels / 16), label = digit"),
)}
REAL_TASKS = tuple(name for name, task in TASKS.items() if not task.has_clauses)


# ------------------------------------------------------------------------------------- DNF


@dataclass(frozen=True)
class DNFConfig:
    """One DNF setting. n=32 inputs, k=3 literals: see BENCHMARKS.md for why."""

    n_inputs: int = 32
    clauses: int = 8
    k: int = 3
    neurons: int = 8
    alpha: int = DEFAULT_ALPHA
    n_train: int = 4000
    n_test: int = 4000
    warmup_epochs: int = 30
    post_epochs: int = 60
    lr: float = 6e-3
    batch_size: int = 256


# Negatives are inputs that satisfy no clause, found by rejection sampling (dnf.sample): the rarer
# they are, the longer that takes, until it gives up. Below this fraction of random inputs a setting
# is refused up front (benchmarks/fpe/timings.py times the sampling against the number of clauses).
MIN_NEGATIVE_FRACTION = 1 / 256


def max_clauses(k: int) -> int:
    """The most clauses of k literals whose formula still leaves MIN_NEGATIVE_FRACTION of random
    inputs false ((1 - 2^-k)^m, exact for clauses that share no variable)."""
    return int(math.log(MIN_NEGATIVE_FRACTION) / math.log(1 - 2.0**-k))


# Default rule lists, checked against the registry when this module is read. Spelled out rather
# than `tuple(RULES)`, so a new rule does not change what a published study runs.
POINT_RULES = known(("random", "clause", "feature", "overlapping", "dense-wide"))
ALPHA_RULES = known(("random", "clause", "overlapping", "dense-wide"))
SWEEP_RULES = known(("random", "clause"))
REAL_RULES = known(("random",))


@dataclass(frozen=True)
class Study:
    name: str
    summary: str  # one line for --help
    vary: str  # the setting its table and plot run along: "clauses", "neurons" or "alpha"
    rules: tuple[str, ...]  # what it runs unless --rule says otherwise
    settings: Callable[[DNFConfig], list[DNFConfig]]  # its settings around the base one
    fixes: tuple[str, ...] = ()  # settings it chooses itself (their flags would be ignored)


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("single", "one setting, from the flags", "clauses", SWEEP_RULES, lambda b: [b]),
    Study("point", f"the paper's point: 8 clauses, 8 neurons, alpha 2; rules {', '.join(POINT_RULES)}", "alpha",
          POINT_RULES, lambda b: [replace(b, clauses=8, neurons=8, alpha=2)], ("clauses", "neurons", "alpha")),
    Study("alpha", "alpha 2 and 4 at 8 clauses, 8 neurons", "alpha", ALPHA_RULES,
          lambda b: [replace(b, clauses=8, neurons=8, alpha=a) for a in (2, 4)], ("clauses", "neurons", "alpha")),
    Study("clauses", "clauses 4, 8, 16, 32 at 8 neurons", "clauses", SWEEP_RULES,
          lambda b: [replace(b, neurons=8, clauses=m) for m in (4, 8, 16, 32)], ("clauses", "neurons")),
    Study("neurons", "neurons 4, 8, 16, 32 at 8 clauses", "neurons", SWEEP_RULES,
          lambda b: [replace(b, clauses=8, neurons=h) for h in (4, 8, 16, 32)], ("clauses", "neurons")),
)}
# Studies run together. With both sweeps, the relative gain is fitted against the load.
GROUPS: dict[str, tuple[str, ...]] = {"load": ("clauses", "neurons"), "all": ("point", "alpha", "clauses", "neurons")}
GAIN_FIT_STUDIES = ("clauses", "neurons")


def study_parts(name: str) -> tuple[str, ...]:
    """The single studies a --study name runs."""
    if name in STUDIES:
        return (name,)
    if name in GROUPS:
        return GROUPS[name]
    raise ValueError(f"unknown DNF study {name!r}; use one of {', '.join([*STUDIES, *GROUPS])}")


def dnf_study(name: str, base: DNFConfig, rules: Sequence[str] | None = None) -> tuple[list, tuple, str]:
    """(configs, rules, the parameter that varies) for a named single study around `base`."""
    if name not in STUDIES:
        raise ValueError(f"unknown DNF study {name!r}; use one of {', '.join(STUDIES)}")
    study = STUDIES[name]
    return study.settings(base), tuple(rules or study.rules), study.vary


# ------------------------------------------------------------------------------- real data


@dataclass(frozen=True)
class RealConfig:
    task: str = "digits"
    fpe_widths: tuple[int, ...] = (8, 16, 32)
    dense_widths: tuple[int, ...] = (4, 8, 12, 16, 24, 32, 48, 64, 96)
    depths: tuple[int, ...] = (1, DEFAULT_DEPTH)
    deep_fpe_widths: tuple[int, ...] = (8, 16)
    alpha: int = DEFAULT_ALPHA
    warmup_epochs: int = 30
    post_epochs: int = 60
    lr: float = 3e-3
    batch_size: int = 128


def default_config(task: str) -> RealConfig:
    """Per-task defaults. The 384-d embedding tasks overfit fast (2,400 training examples):
    a shorter schedule at a lower learning rate keeps test accuracy near its best."""
    if task == "digits":
        return RealConfig(
            task=task, fpe_widths=(4, 8, 16), dense_widths=(4, 8, 16, 32, 64), warmup_epochs=20, post_epochs=40
        )
    return RealConfig(
        task=task,
        fpe_widths=(4, 8, 16),
        dense_widths=(4, 8, 16, 32, 64),
        warmup_epochs=10,
        post_epochs=20,
        lr=1e-3,
    )


# --------------------------------------------------------------------------- one `fpe` run


@dataclass(frozen=True)
class FPEStudyConfig:
    """One `fpe` run as plain values. None means the task's or the study's default."""

    task: str
    study: str | None = None  # DNF: a name in STUDIES or GROUPS (default "single")
    rules: tuple[str, ...] | None = None  # default: the study's (DNF) or REAL_RULES
    alpha: int | None = None  # children per neuron (default 2)
    neurons: tuple[int, ...] | None = None  # DNF: one parent width (default 8); real: widths to split
    clauses: int | None = None  # DNF (default 8)
    depth: int | None = None  # real data: hidden layers of the deeper MLP (default 3; 1 = none)
    seeds: int = 5  # seeds 0..seeds-1
    epochs: tuple[int, int] | None = None  # (warm-up, after the split); default per task
    threads: int = 1  # torch CPU threads
    save_models: bool = False

    @property
    def is_dnf(self) -> bool:
        return TASKS[self.task].has_clauses

    def parts(self) -> tuple[str, ...]:
        return study_parts(self.study or "single")

    def check(self) -> FPEStudyConfig:
        """Refuse in one line (UsageError) whatever can be refused without data; returns self."""
        if self.task not in TASKS:
            raise UsageError(f"unknown --task {self.task}; use one of {', '.join(TASKS)}")
        task = TASKS[self.task]
        for flag, value, low in (("--alpha", self.alpha, 2), ("--clauses", self.clauses, 1),
                                 ("--depth", self.depth, 1), ("--seeds", self.seeds, 1),
                                 ("--threads", self.threads, 1)):
            if value is not None and value < low:
                raise UsageError(f"{flag} must be at least {low}, got {value}")
        if self.neurons is not None and (not self.neurons or min(self.neurons) < 1):
            raise UsageError(f"--neurons needs positive integers, got {self.neurons}")
        if self.epochs is not None and (len(self.epochs) != 2 or min(self.epochs) < 0):
            raise UsageError(f"--epochs takes WARMUP,POST (two integers ≥ 0), got {self.epochs}")
        if self.is_dnf:
            self._check_dnf()
        else:
            for flag, value in (("--study", self.study if self.study != "single" else None),
                                ("--clauses", self.clauses)):
                if value is not None:
                    raise UsageError(f"{flag} applies to --task dnf only")
        if self.rules is not None:
            check_rules(self.rules, task=self.task, task_has_clauses=task.has_clauses)
        alpha = self.alpha or DEFAULT_ALPHA
        dealt = [r for r in self.rules_to_run() if RULES[r].deals_inputs]
        if dealt and alpha > task.inputs:
            raise UsageError(f"--alpha {alpha} exceeds the {task.inputs} inputs of --task {self.task}: the "
                             f"{dealt[0]} rule gives every child at least one input")
        return self

    def _check_dnf(self) -> None:
        name = self.study or "single"
        if name not in STUDIES and name not in GROUPS:
            raise UsageError(f"unknown --study {name}; use one of {', '.join([*STUDIES, *GROUPS])}")
        if self.depth is not None:
            raise UsageError("--depth applies to real-data tasks; a DNF network has one hidden layer")
        if self.neurons is not None and len(self.neurons) != 1:
            raise UsageError("--task dnf takes one --neurons value; the neurons study sweeps 4..32")
        fixed = {f for part in self.parts() for f in STUDIES[part].fixes}
        for flag in ("clauses", "neurons", "alpha"):
            if flag in fixed and getattr(self, flag) is not None:
                raise UsageError(f"--study {name} sets --{flag} itself; drop --{flag} or use --study single")
        k = DNFConfig.k
        if self.clauses is not None and self.clauses > max_clauses(k):
            raise UsageError(f"--clauses {self.clauses} is too many: fewer than 1 in {1 / MIN_NEGATIVE_FRACTION:.0f} "
                             f"random inputs would satisfy no clause of {k} literals, too few negatives to "
                             f"sample; use at most {max_clauses(k)}")

    def rules_to_run(self) -> tuple[str, ...]:
        """Every rule this run trains besides the dense baseline: the chosen ones in their order,
        else the defaults of the task or of every study it runs."""
        if self.rules is not None:
            return self.rules
        if not self.is_dnf:
            return REAL_RULES
        return tuple(dict.fromkeys(r for part in self.parts() for r in STUDIES[part].rules))

    def dnf_base(self) -> DNFConfig:
        """The DNF setting the flags describe (what --study single runs; others vary around it)."""
        base = DNFConfig()
        if self.alpha is not None:
            base = replace(base, alpha=self.alpha)
        if self.clauses is not None:
            base = replace(base, clauses=self.clauses)
        if self.neurons is not None:
            base = replace(base, neurons=self.neurons[0])
        if self.epochs is not None:
            base = replace(base, warmup_epochs=self.epochs[0], post_epochs=self.epochs[1])
        return base

    def real_config(self) -> RealConfig:
        depth = self.depth or DEFAULT_DEPTH
        cfg = replace(default_config(self.task), alpha=self.alpha or DEFAULT_ALPHA,
                      depths=(1,) if depth == 1 else (1, depth))
        if self.neurons is not None:
            cfg = replace(cfg, fpe_widths=tuple(self.neurons))
        if self.epochs is not None:
            cfg = replace(cfg, warmup_epochs=self.epochs[0], post_epochs=self.epochs[1])
        return cfg

    def command_line(self, out: str) -> str:
        """The command that reproduces this run."""
        parts = ["sparse-expansion fpe", f"--task {self.task}"]
        for name in ("study", "alpha", "rules", "neurons", "clauses", "depth", "seeds", "epochs", "threads"):
            value = getattr(self, name)
            if value is None or (name == "threads" and value == 1):
                continue
            flag = "rule" if name == "rules" else name
            text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            parts.append(f"--{flag} {text}")
        if self.save_models:
            parts.append("--save-models")
        return " ".join(parts) + f" --out {out}"


# ------------------------------------------------------------------------------- analysis


def gain_vs_load(runs: Sequence[dict]) -> dict:
    """Relative gain of each FPE network over its seed's dense baseline, against the load.

    Load = clauses / parent neurons. The fold changes are FPE / dense of the trained networks'
    feature capacity and mean |cos|. Least squares: gain = b0 + b1·log2(capacity fold)
    + b2·log2(|cos| fold), over every (setting, seed, rule) point.
    """
    import numpy as np

    dense = {(r["clauses"], r["hidden_parent"], r["seed"]): r for r in runs if r["rule"] == DENSE}
    points = []
    for r in runs:
        if r["rule"] == DENSE:
            continue
        d = dense[(r["clauses"], r["hidden_parent"], r["seed"])]
        points.append(
            {
                "rule": r["rule"],
                "seed": r["seed"],
                "clauses": r["clauses"],
                "neurons": r["hidden_parent"],
                "load": r["clauses"] / r["hidden_parent"],
                "gain": (r["test_accuracy"] - d["test_accuracy"]) / d["test_accuracy"],
                "capacity_fold": r["after"]["feature_capacity"] / d["after"]["feature_capacity"],
                "cosine_fold": r["after"]["mean_abs_cosine"] / d["after"]["mean_abs_cosine"],
            }
        )
    out: dict = {"points": points}
    if len(points) >= 4:
        y = np.array([p["gain"] for p in points])
        X = np.column_stack(
            [
                np.ones(len(points)),
                [math.log2(p["capacity_fold"]) for p in points],
                [math.log2(p["cosine_fold"]) for p in points],
            ]
        )
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum() or 1.0)
        load = np.array([p["load"] for p in points])
        out["fit"] = {
            "model": "gain = b0 + b1*log2(capacity_fold) + b2*log2(abs_cosine_fold)",
            "b0": float(coef[0]),
            "b1_log2_capacity_fold": float(coef[1]),
            "b2_log2_abs_cosine_fold": float(coef[2]),
            "r2": r2,
            "n_points": len(points),
            "pearson_gain_vs_log2_load": float(np.corrcoef(np.log2(load), y)[0, 1]),
        }
    return out
