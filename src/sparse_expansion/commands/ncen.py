"""`sparse-expansion ncen`: negative correlation ensembles against adversarial examples, with baselines.

Parses and checks every flag before any work, calls `sparse_expansion.ncen`, writes the folder.
Heavy imports happen inside the handler so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import fields, replace

from ..errors import UsageError

DATASETS = ("digits", "plays")
ATTACKS = ("fgsm", "pgd", "apgd", "pgd_logits")
TIE_INS = ("none", "tiny", "smollm2")


def _method_registry():
    from ..ncen.methods import METHODS

    return METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ncen",
        help="NCEn: ensembles with negatively correlated input gradients, attacked, against baselines",
        description=(
            "Train ensembles with NCEn (negatively correlated input-gradient directions and magnitudes) and "
            "baselines (independent members, one wide single model, ADP, GAL); attack each ensemble white-box "
            "with torchattacks (FGSM, PGD, APGD, PGD on averaged logits) and measure transfer between members. "
            "Writes results.json, PNG plots and report.md into --out."
        ),
    )
    p.add_argument("--data", choices=DATASETS, default="digits",
                   help="digits (sklearn 8x8) or plays (MiniLM embeddings of Shakespeare lines; attacks in "
                        "embedding space; default digits)")
    p.add_argument("--methods", default="ncen,independent,single,adp,gal",
                   help="comma list of ncen,independent,single,adp,gal (default: all)")
    p.add_argument("--seeds", default="1,2,3", help="comma list of seeds (default 1,2,3)")
    p.add_argument("--out", required=True, help="new folder for results.json, PNGs and report.md")
    t = p.add_argument_group("members and training (defaults per data set)")
    t.add_argument("--members", type=int, default=3, help="ensemble size M (default 3)")
    t.add_argument("--arch", choices=("mlp", "cnn"), default="mlp",
                   help="member network: mlp (default) or cnn (digits only)")
    t.add_argument("--hidden", type=int, default=None, help="MLP width / CNN channels of a member (default 64)")
    t.add_argument("--epochs", type=int, default=None, help="training epochs (default 40 digits, 20 plays)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-3 digits, 1e-3 plays)")
    t.add_argument("--batch-size", type=int, default=None, help="minibatch (default 64)")
    a = p.add_argument_group("attacks")
    a.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma list of {','.join(ATTACKS)} (default: all)")
    a.add_argument("--eps", default=None,
                   help="comma list of L-inf radii as fractions of each feature's range (default: the data's "
                        "class-mean distance x 1/32,1/16,1/8,1/4,1/2)")
    a.add_argument("--headline-eps", type=float, default=None,
                   help="the epsilon of the verdict and the transfer matrix; one of --eps (default: the middle one)")
    a.add_argument("--steps", type=int, default=20, help="PGD/APGD iterations (default 20)")
    w = p.add_argument_group("method weights")
    for method in _method_registry().values():
        for f in fields(method.config):
            w.add_argument(f"--{method.name}-{f.name.replace('_', '-')}", dest=f"w_{method.name}_{f.name}",
                           type=type(f.default), default=None, help=f"{method.name}: {f.name} (default {f.default})")
    o = p.add_argument_group("other")
    o.add_argument("--tie-in", choices=TIE_INS, default="tiny",
                   help="also measure Sparse Expansion experts (tiny random Llama, or one SmolLM2 layer) and FPE "
                        "children the same way (default tiny; none skips)")
    o.add_argument("--tie-in-layer", type=int, default=0, help="smollm2 tie-in: decoder layer to expand (default 0)")
    o.add_argument("--limit", type=int, default=None, help="at most N training and N test examples (quick checks)")
    o.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: small ops, 2 shared cores)")
    p.set_defaults(func=handler)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes integers separated by commas, got {text!r}") from None
    if not vals:
        raise UsageError(f"{flag} is empty")
    if len(set(vals)) != len(vals):
        raise UsageError(f"{flag} repeats a value: {text!r}")
    if min(vals) < 0:
        raise UsageError(f"{flag} takes non-negative integers, got {text!r}")
    return vals


def _names(text: str, allowed, flag: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UsageError(f"unknown {flag} {','.join(bad) or repr(text)}; use {','.join(allowed)}")
    if len(set(names)) != len(names):
        raise UsageError(f"{flag} repeats a name: {text!r}")
    return names


def _eps_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--eps takes numbers separated by commas, got {text!r}") from None
    if not vals or any(not (math.isfinite(v) and 0 < v <= 1) for v in vals):
        raise UsageError(f"--eps values must lie in (0, 1] (fractions of each feature's range), got {text!r}")
    if len(set(vals)) != len(vals):
        raise UsageError(f"--eps repeats a value: {text!r}")
    return sorted(vals)


def _check(args: argparse.Namespace) -> dict:
    """Every bad input raises UsageError here, before any data is loaded or model trained."""
    methods = _names(args.methods, tuple(_method_registry()), "--methods")
    seeds = _int_list(args.seeds, "--seeds")
    attacks = _names(args.attacks, ATTACKS, "--attacks")
    eps = _eps_list(args.eps) if args.eps is not None else None
    if args.headline_eps is not None and eps is not None and args.headline_eps not in eps:
        raise UsageError(f"--headline-eps {args.headline_eps:g} is not one of --eps {args.eps}")
    if args.headline_eps is not None and eps is None:
        raise UsageError("--headline-eps needs an explicit --eps list that contains it")
    for flag, value, low in (("--members", args.members, 2), ("--hidden", args.hidden, 1), ("--epochs", args.epochs, 1),
                             ("--batch-size", args.batch_size, 1), ("--steps", args.steps, 1),
                             ("--threads", args.threads, 1), ("--limit", args.limit, 10),
                             ("--tie-in-layer", args.tie_in_layer, 0)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.arch == "cnn" and args.data != "digits":
        raise UsageError("--arch cnn needs square images; use --data digits")
    weights = {}
    for name in methods:
        method = _method_registry()[name]
        given = {f.name: getattr(args, f"w_{name}_{f.name}") for f in fields(method.config)}
        cfg = method.config(**{k: v for k, v in given.items() if v is not None})
        try:
            method.check(cfg)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for f in fields(cfg):
            v = getattr(cfg, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"--{name}-{f.name} must be finite, got {v}")
        weights[name] = cfg
    if args.tie_in == "smollm2":
        from ..ncen.tie_in import smollm2_layers

        layers = smollm2_layers()
        if args.tie_in_layer >= layers:
            raise UsageError(f"--tie-in-layer {args.tie_in_layer} is beyond SmolLM2-135M's {layers} decoder layers; "
                             f"use 0 to {layers - 1}")
    from ..io import check_output_dir

    check_output_dir(args.out)
    return {"methods": methods, "seeds": seeds, "attacks": attacks, "eps": eps, "weights": weights}


def _command_line(args: argparse.Namespace, checked: dict) -> str:
    parts = ["sparse-expansion ncen", f"--data {args.data}", f"--methods {','.join(checked['methods'])}",
             f"--seeds {','.join(map(str, checked['seeds']))}"]
    for flag in ("members", "arch", "hidden", "epochs", "lr", "batch_size", "eps", "headline_eps", "steps",
                 "tie_in", "limit"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    if args.attacks != ",".join(ATTACKS):
        parts.append(f"--attacks {args.attacks}")
    for key, value in sorted(vars(args).items()):
        if key.startswith("w_") and value is not None:
            method, field = key[2:].split("_", 1)
            parts.append(f"--{method}-{field.replace('_', '-')} {value}")
    return " ".join(parts) + f" --out {args.out}"


def handler(args: argparse.Namespace) -> int:
    checked = _check(args)
    import torch

    from ..io import atomic_output_dir, write_json
    from ..ncen import data as ncen_data
    from ..ncen import report as rep
    from ..ncen.study import NCEnStudyConfig, run_study
    from ..ncen.training import default_train_config
    from ..progress import progress_bar as tqdm

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    data = ncen_data.load(args.data, limit=args.limit)
    train = default_train_config(args.data)
    overrides = {"members": args.members, "arch": args.arch, "hidden": args.hidden, "epochs": args.epochs,
                 "lr": args.lr, "batch_size": args.batch_size}
    train = replace(train, **{k: v for k, v in overrides.items() if v is not None})
    eps = checked["eps"] or data.eps_grid()
    headline = args.headline_eps if args.headline_eps is not None else eps[len(eps) // 2]
    cfg = NCEnStudyConfig(checked["methods"], checked["seeds"], train, eps, headline, checked["attacks"], args.steps,
                      checked["weights"])
    runs = run_study(data, cfg, progress=tqdm)
    study_seconds = time.perf_counter() - t_start
    tie = _tie_in(args, tqdm)
    result = rep.results_document(data, cfg, runs, tie, study_seconds, _command_line(args, checked))
    report = rep.report_markdown(result)
    with atomic_output_dir(args.out) as out:
        rep.plot_robust(runs, eps, checked["attacks"], out / "robust_accuracy.png",
                        f"{args.data}: white-box robust accuracy (M = {train.members})")
        rep.plot_transfer(runs, out / "transfer_matrices.png", f"{args.data}: PGD transfer at ε = {headline:g}")
        write_json(out / "results.json", result)
        (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {args.out}/results.json, report.md, robust_accuracy.png, transfer_matrices.png")
    return 0


def _tie_in(args: argparse.Namespace, tqdm) -> dict | None:
    if args.tie_in == "none":
        return None
    from ..ncen import tie_in

    t0 = time.perf_counter()
    if args.tie_in == "smollm2":
        experts = tie_in.smollm2_expert_study(layer=args.tie_in_layer)
    else:
        experts = tie_in.tiny_expert_study()
    fpe = tie_in.fpe_children_study()
    return {"sparse_expansion": experts, "fpe": fpe, "seconds": time.perf_counter() - t0}
