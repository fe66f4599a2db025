"""Tables (markdown), plots (PNG, matplotlib Agg) and report.md for the FPE studies."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .rules import DENSE, report_order

if TYPE_CHECKING:
    from .studies import DNFConfig, RealConfig

PAPER_POINT = {"dense": 78.7, "random": 88.7, "clause": 99.4}  # arXiv 2510.04500, 8 clauses/8 neurons/α=2


def _ms(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values]
    sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{digits}f} ± {sd:.{digits}f}"


def group(runs: Sequence[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def dnf_table(runs: Sequence[dict], vary: str) -> str:
    """One row per (varying parameter, rule): accuracy, non-zeros and the polysemanticity metrics."""
    col = {"clauses": "clauses", "neurons": "hidden_parent", "alpha": "alpha_study"}[vary]
    for r in runs:
        r.setdefault("alpha_study", r["config"]["alpha"])
    rows = [
        f"| {vary} | rule | hidden | non-zeros | test acc % | capacity | mean abs cos | clauses/neuron | seeds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = group(runs, [col, "rule"])
    for key in sorted(groups, key=lambda k: (k[0], report_order(k[1]))):
        g = groups[key]
        coll = [r["collisions"]["clauses_per_neuron"] for r in g if "collisions" in r]
        rows.append(
            f"| {key[0]} | {key[1]} | {g[0]['hidden']} | {_ms([r['nonzeros'] for r in g], digits=0)} "
            f"| {_ms([r['test_accuracy'] for r in g], 100)} "
            f"| {_ms([r['after']['feature_capacity'] for r in g], digits=2)} "
            f"| {_ms([r['after']['mean_abs_cosine'] for r in g], digits=3)} "
            f"| {_ms(coll, digits=2) if coll else '–'} | {len(g)} |"
        )
    return "\n".join(rows)


def point_comparison(runs: Sequence[dict]) -> str:
    groups = group(runs, ["rule"])
    rows = ["| rule | ours: test acc % (mean ± std) | paper |", "|---|---:|---:|"]
    for (rule,) in sorted(groups, key=lambda k: report_order(k[0])):
        ref = PAPER_POINT.get(rule)
        accs = [r["test_accuracy"] for r in groups[(rule,)]]
        rows.append(f"| {rule} | {_ms(accs, 100)} | {f'{ref:.1f}' if ref else '–'} |")
    return "\n".join(rows)


def fit_table(fit: dict) -> str:
    if "fit" not in fit:
        return "(too few points for a fit)"
    f = fit["fit"]
    return (
        f"Least squares over {f['n_points']} (setting, seed, rule) points: "
        f"`{f['model']}`: b0 = {f['b0']:.3f}, b1 = {f['b1_log2_capacity_fold']:.3f}, "
        f"b2 = {f['b2_log2_abs_cosine_fold']:.3f}, R² = {f['r2']:.2f}. "
        f"Pearson r(gain, log2 load) = {f['pearson_gain_vs_log2_load']:.2f}."
    )


def gain_table(fit: dict) -> str:
    rows = [
        "| load (clauses/neurons) | rule | relative gain % | capacity fold | abs cos fold | n |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    groups = group(fit["points"], ["load", "rule"])
    for key in sorted(groups, key=lambda k: (k[0], report_order(k[1]))):
        g = groups[key]
        rows.append(
            f"| {key[0]:g} | {key[1]} | {_ms([p['gain'] for p in g], 100)} "
            f"| {_ms([p['capacity_fold'] for p in g], digits=2)} "
            f"| {_ms([p['cosine_fold'] for p in g], digits=2)} | {len(g)} |"
        )
    return "\n".join(rows)


def real_tables(runs: Sequence[dict], matches: Sequence[dict]) -> str:
    rows = [
        "| depth | parent width | rule | hidden | non-zeros | test acc % | seeds |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    fpe_widths = {(r["depth"], r["hidden_parent"]) for r in runs if r["rule"] != DENSE}
    groups = group(runs, ["depth", "hidden_parent", "rule"])
    for key in sorted(groups, key=lambda k: (k[0], k[1], report_order(k[2]))):
        if key[:2] not in fpe_widths:
            continue
        g = groups[key]
        rows.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {g[0]['hidden']} | {g[0]['nonzeros']} "
            f"| {_ms([r['test_accuracy'] for r in g], 100)} | {len(g)} |"
        )
    rows += [
        "",
        "Dense width sweep (the curve FPE is matched against):",
        "",
        "| depth | width | non-zeros | test acc % | seeds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(k for k in groups if k[2] == DENSE):
        g = groups[key]
        rows.append(
            f"| {key[0]} | {key[1]} | {g[0]['nonzeros']} | {_ms([r['test_accuracy'] for r in g], 100)} | {len(g)} |"
        )
    rows += [
        "",
        "Non-zeros a dense net needs to match FPE's mean accuracy:",
        "",
        "| depth | parent width | rule | FPE non-zeros | FPE acc % | dense acc % (same nnz) "
        "| dense non-zeros to match | ratio |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for m in matches:
        need = m["dense_nonzeros_to_match"]
        ratio = f"{need / m['nonzeros']:.2f}×" if need else "–"
        rows.append(
            f"| {m['depth']} | {m['width']} | {m['rule']} | {m['nonzeros']} | {m['fpe_acc'] * 100:.1f} "
            f"| {m['dense_acc'] * 100:.1f} | {f'{need:.0f}' if need else 'not reached'} "
            f"| {ratio} |"
        )
    return "\n".join(rows)


def real_matches(runs: Sequence[dict]) -> list[dict]:
    from .real import dense_match

    out = []
    groups = group(runs, ["depth", "hidden_parent", "rule"])
    for (depth, width, rule), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if rule == DENSE:
            continue
        fpe_acc = statistics.fmean(r["test_accuracy"] for r in g)
        dense = groups.get((depth, width, DENSE), [])
        out.append(
            {
                "depth": depth,
                "width": width,
                "rule": rule,
                "nonzeros": g[0]["nonzeros"],
                "fpe_acc": fpe_acc,
                "dense_acc": statistics.fmean(r["test_accuracy"] for r in dense) if dense else float("nan"),
                "dense_nonzeros_to_match": dense_match(runs, depth, fpe_acc),
            }
        )
    return out


# ---------------------------------------------------------------- report.md


def dnf_header(study: str, base: DNFConfig, seeds: Sequence[int]) -> str:
    return "\n".join([
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
    ])


def dnf_section(name: str, runs: Sequence[dict], vary: str, wall: float) -> str:
    """One single study: its table (and the paper's numbers for the point study) and its plot."""
    text = [f"## Study `{name}` ({wall:.0f} s wall)", "", dnf_table(runs, vary), ""]
    if name == "point":
        text += ["Against the paper (arXiv 2510.04500, 8 clauses, 8 neurons, α = 2):", "",
                 point_comparison(runs), ""]
    text.append(f"![{name}](dnf_{name}.png)\n")
    return "\n".join(text)


def gain_section(fit: dict) -> str:
    return "\n".join(["## Relative gain against polysemantic load", "", gain_table(fit), "", fit_table(fit), "",
                      "![gain](dnf_gain_vs_load.png)", ""])


def real_report(task: str, description: str, cfg: RealConfig, rules: Sequence[str], seeds: Sequence[int],
                wall: float, runs: Sequence[dict], matches: Sequence[dict]) -> str:
    return "\n".join([
        f"# FPE on real data — `{task}` ({wall:.0f} s wall)",
        "",
        f"{description}; stratified 75/25 split (fixed), features standardised on the training part. "
        f"ReLU MLP, Adam lr {cfg.lr}, batch {cfg.batch_size}; {cfg.warmup_epochs} warm-up epochs "
        f"→ split (α = {cfg.alpha}, rules {', '.join(rules)}; FPE at every hidden layer) → "
        f"{cfg.post_epochs} epochs, fresh optimizer for all. Seeds {seeds[0]}..{seeds[-1]} (init "
        "and batch order), mean ± std over seeds.",
        "",
        real_tables(runs, matches),
        "",
        f"![{task}]({task}.png)",
        "",
    ])


# ---------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dnf(runs: Sequence[dict], vary: str, path: Path, title: str) -> None:
    plt = _plt()
    col = {"clauses": "clauses", "neurons": "hidden_parent", "alpha": "alpha_study"}[vary]
    for r in runs:
        r.setdefault("alpha_study", r["config"]["alpha"])
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = group(runs, [col, "rule"])
    xs = sorted({k[0] for k in groups})
    rules = sorted({k[1] for k in groups}, key=report_order)
    if len(xs) == 1:  # a bar chart for a single setting
        for i, rule in enumerate(rules):
            accs = [r["test_accuracy"] * 100 for r in groups[(xs[0], rule)]]
            sd = statistics.pstdev(accs) if len(accs) > 1 else 0.0
            ax.bar(i, statistics.fmean(accs), yerr=sd, capsize=4)
            if rule in PAPER_POINT and xs[0] == 2:
                ax.plot([i - 0.4, i + 0.4], [PAPER_POINT[rule]] * 2, "k--", lw=1)
        ax.set_xticks(range(len(rules)), rules, rotation=20)
        ax.set_ylim(50, 100)
    else:
        for rule in rules:
            m, s = [], []
            for x in xs:
                accs = [r["test_accuracy"] * 100 for r in groups.get((x, rule), [])]
                m.append(statistics.fmean(accs))
                s.append(statistics.pstdev(accs) if len(accs) > 1 else 0.0)
            ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=rule)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(vary)
        ax.legend()
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gain(fit: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for rule in sorted({p["rule"] for p in fit["points"]}, key=report_order):
        pts = [p for p in fit["points"] if p["rule"] == rule]
        axes[0].scatter([p["load"] for p in pts], [100 * p["gain"] for p in pts], label=rule, alpha=0.7)
        axes[1].scatter([p["capacity_fold"] for p in pts], [100 * p["gain"] for p in pts], label=rule, alpha=0.7)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("polysemantic load = clauses / parent neurons")
    axes[1].set_xlabel("feature capacity fold (FPE / dense)")
    for ax in axes:
        ax.set_ylabel("relative gain over dense %")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend()
    if "fit" in fit:
        f = fit["fit"]
        axes[1].set_title(
            f"gain = {f['b0']:.2f} {f['b1_log2_capacity_fold']:+.2f}·log2 cap "
            f"{f['b2_log2_abs_cosine_fold']:+.2f}·log2 cos, R²={f['r2']:.2f}",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_real(runs: Sequence[dict], path: Path, title: str) -> None:
    plt = _plt()
    depths = sorted({r["depth"] for r in runs})
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        groups = group([r for r in runs if r["depth"] == depth], ["rule", "nonzeros"])
        for rule in sorted({k[0] for k in groups}, key=report_order):
            keys = sorted(k for k in groups if k[0] == rule)
            nz = [k[1] for k in keys]
            m = [statistics.fmean(r["test_accuracy"] * 100 for r in groups[k]) for k in keys]
            s = [statistics.pstdev([r["test_accuracy"] * 100 for r in groups[k]]) for k in keys]
            style = "-o" if rule == DENSE else "s"
            ax.errorbar(
                nz,
                m,
                yerr=s,
                fmt=style,
                capsize=3,
                label=f"{rule}" + ("" if rule == DENSE else f" (α={groups[keys[0]][0]['alpha']})"),
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("non-zero parameters")
        ax.set_ylabel("test accuracy % (mean ± std)")
        ax.set_title(f"{title}: {depth} hidden layer{'s' if depth > 1 else ''}", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
