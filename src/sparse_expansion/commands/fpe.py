"""`sparse-expansion fpe`: fixed parameter expansion studies (DNF tasks and real data).

Heavy imports (torch, the library) happen inside the handler so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import time

from ..errors import UsageError

TASKS = ("dnf", "plays", "bible", "digits")
DNF_STUDIES = ("single", "point", "alpha", "clauses", "neurons", "load", "all")
ALL_RULES = ("random", "clause", "feature", "overlapping", "dense-wide")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fpe",
        help="fixed parameter expansion: split neurons, keep the non-zero count fixed",
        description=(
            "Train a dense MLP, split each hidden neuron into ALPHA children with disjoint input "
            "masks, prune back to the same non-zero count, keep training; compare with the dense "
            "baseline. Writes results.json, PNG plots and report.md into --out."
        ),
    )
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument(
        "--study",
        choices=DNF_STUDIES,
        default=None,
        help="DNF only: single (the flags below), point (8 clauses, 8 neurons, α=2, all rules), "
        "alpha (2, 4), clauses (4..32), neurons (4..32), load (both sweeps + gain fit), all",
    )
    p.add_argument("--alpha", type=int, default=2, help="children per neuron (default 2)")
    p.add_argument(
        "--rule",
        default=None,
        help=f"comma list of {','.join(ALL_RULES)} (default: per study; random for real data)",
    )
    p.add_argument(
        "--neurons",
        default=None,
        help="DNF: parent hidden neurons (default 8); real data: comma list of parent widths to split (default 4,8,16)",
    )
    p.add_argument("--clauses", type=int, default=8, help="DNF clauses (default 8)")
    p.add_argument(
        "--depth", type=int, default=3, help="real data: hidden layers of the deep MLP (default 3; 1 = none)"
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 (default 5)")
    p.add_argument(
        "--epochs", default=None, help="WARMUP,POST epochs (default 30,60 for dnf, 20,40 digits, 10,20 plays/bible)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--save-models", action="store_true",
                   help="also save every trained network as a model folder (default off)")
    p.add_argument("--out", required=True, help="new folder for results.json, PNGs and report.md")
    p.set_defaults(func=handler)


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes integers separated by commas, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise UsageError(f"{flag} needs positive integers, got {text!r}")
    return vals


def _check(args: argparse.Namespace) -> tuple[list[str] | None, tuple[int, int] | None]:
    if args.alpha < 2:
        raise UsageError(f"--alpha must be at least 2, got {args.alpha}")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    if args.clauses < 1:
        raise UsageError(f"--clauses must be at least 1, got {args.clauses}")
    if args.depth < 1:
        raise UsageError(f"--depth must be at least 1, got {args.depth}")
    rules = None
    if args.rule:
        rules = [r.strip() for r in args.rule.split(",") if r.strip()]
        bad = [r for r in rules if r not in ALL_RULES]
        if bad or not rules:
            raise UsageError(f"unknown --rule {','.join(bad) or args.rule!r}; use {','.join(ALL_RULES)}")
        if args.task != "dnf" and "clause" in rules:
            raise UsageError("the clause rule needs a DNF task's clauses; use --task dnf")
    if args.task != "dnf" and args.study not in (None, "single"):
        raise UsageError("--study applies to --task dnf only")
    epochs = None
    if args.epochs:
        vals = [v for v in args.epochs.split(",")]
        try:
            epochs = (int(vals[0]), int(vals[1]))
        except (ValueError, IndexError):
            raise UsageError(f"--epochs takes WARMUP,POST (two integers), got {args.epochs!r}") from None
        if len(vals) != 2 or min(epochs) < 0:
            raise UsageError(f"--epochs takes WARMUP,POST (two integers ≥ 0), got {args.epochs!r}")
    return rules, epochs


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (from the parsed flags, not sys.argv)."""
    parts = ["sparse-expansion fpe", f"--task {args.task}"]
    for flag in ("study", "alpha", "rule", "neurons", "clauses", "depth", "seeds", "epochs"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag} {value}")
    return " ".join(parts) + f" --out {args.out}"


def _save_models(runs: list[dict], out, task: str) -> None:
    """Every trained network as an artifact (kind fpe_mlp), loadable with models.load_model."""
    from ..artifact import save_artifact

    for i, run in enumerate(runs):
        model = run.pop("_model", None)
        if model is not None:
            name = f"{i:04d}-{run['rule']}-h{run['hidden']}-d{run['depth']}-s{run['seed']}"
            run["model_dir"] = f"models/{name}"
            facts = {k: v for k, v in run.items() if k != "model_dir"}
            save_artifact(out / "models" / name, model, record={"method": "fpe", "task": task, **facts})


def handler(args: argparse.Namespace) -> int:
    rules, epochs = _check(args)
    from ..io import atomic_output_dir, check_output_dir

    check_output_dir(args.out)  # fail before any training
    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    command = _command_line(args)
    if args.task == "dnf":
        result, report = _run_dnf(args, rules, epochs, tqdm)
    else:
        result, report = _run_real(args, rules, epochs, tqdm)
    result["command"] = command
    with atomic_output_dir(args.out) as out:
        if args.save_models:
            _save_models(result["runs"], out, args.task)
        for run in result["runs"]:
            run.pop("_model", None)
        for name, fn in result.pop("_plots"):
            fn(out / name)
        from ..io import write_json

        write_json(out / "results.json", result)
        (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {args.out}/results.json, report.md and plots")
    return 0


def _run_dnf(args, rules, epochs, tqdm):
    from dataclasses import asdict, replace

    from ..fpe import report as rep
    from ..fpe.studies import DNFConfig, dnf_study, gain_vs_load, run_grid

    base = DNFConfig(clauses=args.clauses, alpha=args.alpha)
    if args.neurons:
        widths = _ints(args.neurons, "--neurons")
        if len(widths) != 1:
            raise UsageError("--task dnf takes one --neurons value; the neurons study sweeps 4..32")
        base = replace(base, neurons=widths[0])
    if epochs:
        base = replace(base, warmup_epochs=epochs[0], post_epochs=epochs[1])
    study = args.study or "single"
    names = {"all": ["point", "alpha", "clauses", "neurons"], "load": ["clauses", "neurons"]}.get(study, [study])
    seeds = list(range(args.seeds))
    runs, walls, plots, sections = [], {}, [], []
    for name in names:
        configs, study_rules, vary = dnf_study(name, base, rules)
        t0 = time.perf_counter()
        study_runs = run_grid(configs, study_rules, seeds, progress=tqdm, keep_models=args.save_models)
        walls[name] = time.perf_counter() - t0
        for r in study_runs:
            r["study"] = name
        runs.extend(study_runs)
        title = f"FPE on DNF, study '{name}' ({len(seeds)} seeds)"
        plots.append((f"dnf_{name}.png", lambda path, rr=study_runs, v=vary, t=title: rep.plot_dnf(rr, v, path, t)))
        text = [f"## Study `{name}` ({walls[name]:.0f} s wall)", "", rep.dnf_table(study_runs, vary), ""]
        if name == "point":
            text += [
                "Against the paper (arXiv 2510.04500, 8 clauses, 8 neurons, α = 2):",
                "",
                rep.point_comparison(study_runs),
                "",
            ]
        text.append(f"![{name}](dnf_{name}.png)\n")
        sections.append("\n".join(text))
    result = {
        "task": "dnf",
        "study": study,
        "settings": asdict(base),
        "seeds": seeds,
        "wall_seconds": walls,
        "runs": runs,
    }
    if study in ("load", "all"):
        sweep = [r for r in runs if r["study"] in ("clauses", "neurons")]
        # the (8 clauses, 8 neurons) setting appears in both sweeps: count it once
        seen, uniq = set(), []
        for r in sweep:
            key = (r["clauses"], r["hidden_parent"], r["seed"], r["rule"])
            if key not in seen:
                seen.add(key)
                uniq.append(r)
        fit = gain_vs_load(uniq)
        result["gain_vs_load"] = fit
        plots.append(("dnf_gain_vs_load.png", lambda path, f=fit: rep.plot_gain(f, path)))
        sections.append(
            "\n".join(
                [
                    "## Relative gain against polysemantic load",
                    "",
                    rep.gain_table(fit),
                    "",
                    rep.fit_table(fit),
                    "",
                    "![gain](dnf_gain_vs_load.png)",
                    "",
                ]
            )
        )
    result["_plots"] = plots
    header = [
        f"# FPE on Boolean DNF tasks — study `{study}`",
        "",
        f"n = {base.n_inputs} inputs (±1), k = {base.k} literals per clause, {base.n_train} train / "
        f"{base.n_test} test examples (balanced), one hidden ReLU layer, Adam lr {base.lr}, "
        f"batch {base.batch_size}; schedule {base.warmup_epochs} warm-up epochs → split → "
        f"{base.post_epochs} epochs (fresh optimizer for every network, dense baseline included). "
        f"Seeds {seeds[0]}..{seeds[-1]} (formula, data and init all follow the seed); mean ± std "
        "(population) over seeds. Non-zeros = masked weights + biases; every FPE network equals "
        "its dense parent's count exactly. Capacity = Σ feature capacity of the first layer; "
        "mean abs cos = mean |cosine| over pairs of first-layer neurons; clauses/neuron = clauses "
        "with at least one literal still read by a neuron.",
        "",
    ]
    return result, "\n".join(header + sections)


def _run_real(args, rules, epochs, tqdm):
    from dataclasses import asdict, replace

    from ..fpe import report as rep
    from ..fpe.real import default_config, run_real

    cfg = default_config(args.task)
    cfg = replace(cfg, alpha=args.alpha, depths=(1,) if args.depth == 1 else (1, args.depth))
    if args.neurons:
        widths = tuple(_ints(args.neurons, "--neurons"))
        cfg = replace(cfg, fpe_widths=widths)
    if epochs:
        cfg = replace(cfg, warmup_epochs=epochs[0], post_epochs=epochs[1])
    rules = rules or ["random"]
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    runs = run_real(cfg, rules, seeds, progress=tqdm, keep_models=args.save_models)
    wall = time.perf_counter() - t0
    matches = rep.real_matches(runs)
    result = {
        "task": args.task,
        "settings": asdict(cfg),
        "seeds": seeds,
        "rules": rules,
        "wall_seconds": {args.task: wall},
        "runs": runs,
        "dense_match": matches,
    }
    result["_plots"] = [(f"{args.task}.png", lambda path: rep.plot_real(runs, path, args.task))]
    data = {
        "plays": "frozen MiniLM (all-MiniLM-L6-v2) embeddings of 400 spoken lines from each of 8 plays, label = play",
        "bible": "frozen MiniLM (all-MiniLM-L6-v2) embeddings of 400 KJV verses from each of 8 books, label = book",
        "digits": "sklearn digits (1,797 8×8 images, pixels / 16), label = digit",
    }[args.task]
    report = "\n".join(
        [
            f"# FPE on real data — `{args.task}` ({wall:.0f} s wall)",
            "",
            f"{data}; stratified 75/25 split (fixed), features standardised on the training part. "
            f"ReLU MLP, Adam lr {cfg.lr}, batch {cfg.batch_size}; {cfg.warmup_epochs} warm-up epochs "
            f"→ split (α = {cfg.alpha}, rules {', '.join(rules)}; FPE at every hidden layer) → "
            f"{cfg.post_epochs} epochs, fresh optimizer for all. Seeds {seeds[0]}..{seeds[-1]} (init "
            "and batch order), mean ± std over seeds.",
            "",
            rep.real_tables(runs, matches),
            "",
            f"![{args.task}]({args.task}.png)",
            "",
        ]
    )
    return result, report
