"""Seed summaries, the verdict on the issue's targets, tables and plots for an NCEn study.

Spread over seeds is the sample standard deviation (n - 1); with one seed it is 0 and every
"beyond the spread" verdict reduces to a plain comparison, which the report says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .attacks import eps_key
from .methods import METHODS


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def summarize(runs: list[dict], headline: float, attacks: Sequence[str]) -> dict[str, dict]:
    """Per method: mean and std over seeds of every number the report shows."""
    key = eps_key(headline)
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        row = {"seeds": len(rs)}
        row["clean"] = mean_std([r["clean_accuracy"] for r in rs])
        for a in (*attacks, "worst"):
            row[a] = mean_std([r["robust_accuracy"][a][key] for r in rs])
        row["transfer"] = mean_std([r["transfer_rate"] for r in rs])
        row["cosine"] = mean_std([r["gradient_cosine"] for r in rs])
        row["norm_corr"] = mean_std([r["gradient_norm_correlation"] for r in rs])
        row["members"] = mean_std([sum(r["member_clean_accuracy"]) / len(r["member_clean_accuracy"]) for r in rs])
        out[method] = row
    return out


def _fmt(ms: tuple[float | None, float | None], pct: bool = True) -> str:
    m, s = ms
    if m is None:
        return "—"
    if pct:
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:+.3f} ± {s:.3f}"


def results_table(summary: dict[str, dict], attacks: Sequence[str], headline: float) -> str:
    heads = ["method", "clean %", "members' clean %"] + [f"{a} % @ε={eps_key(headline)}" for a in (*attacks, "worst")]
    heads += ["transfer rate %", "grad cosine", "grad-norm corr"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for method, row in summary.items():
        cells = [f"`{method}`", _fmt(row["clean"]), _fmt(row["members"])]
        cells += [_fmt(row[a]) for a in (*attacks, "worst")]
        cells += [_fmt(row["transfer"]), _fmt(row["cosine"], pct=False), _fmt(row["norm_corr"], pct=False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_table(runs: list[dict], attack: str, eps: Sequence[float]) -> str:
    """Robust accuracy (mean ± std over seeds) at every ε, one row per method."""
    heads = ["method"] + [f"ε={eps_key(e)}" for e in eps]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        cells = [_fmt(mean_std([r["robust_accuracy"][attack][eps_key(e)] for r in rs])) for e in eps]
        lines.append("| " + " | ".join([f"`{method}`", *cells]) + " |")
    return "\n".join(lines)


def verdict(summary: dict[str, dict], headline: float) -> list[str]:
    """The issue's three targets, NCEn against the independent ensemble, stated plainly."""
    if "ncen" not in summary or "independent" not in summary:
        return ["No verdict: the targets compare `ncen` with `independent`; run both."]
    n, i = summary["ncen"], summary["independent"]

    def missing(key: str) -> bool:
        return n[key][0] is None or i[key][0] is None

    lines = []
    if missing("pgd") or missing("clean"):
        return ["No verdict: PGD or clean accuracy is missing for `ncen` or `independent`."]
    (pn, sn), (pi, si) = n["pgd"], i["pgd"]
    spread = max(sn, si)
    gain = pn - pi
    ok = gain > spread
    lines.append(
        f"- **PGD robust accuracy at ε = {eps_key(headline)}**: NCEn {100 * pn:.1f}% vs independent "
        f"{100 * pi:.1f}% (difference {100 * gain:+.1f} points, seed spread {100 * spread:.1f}) — "
        f"target {'MET' if ok else 'NOT met'}."
    )
    (cn, _), (ci, _) = n["clean"], i["clean"]
    ok = abs(cn - ci) <= 0.02
    lines.append(
        f"- **Clean accuracy within 2 points**: NCEn {100 * cn:.1f}% vs independent {100 * ci:.1f}% "
        f"({100 * (cn - ci):+.1f} points) — target {'MET' if ok else 'NOT met'}."
    )
    if missing("transfer"):
        lines.append("- **Lower transfer rate between members**: not measurable (no example fooled a source member "
                     "while its target was right).")
    else:
        (tn, stn), (ti, sti) = n["transfer"], i["transfer"]
        ok = tn < ti
        lines.append(
            f"- **Lower transfer rate between members**: NCEn {100 * tn:.1f}% ± {100 * stn:.1f} vs independent "
            f"{100 * ti:.1f}% ± {100 * sti:.1f} — target {'MET' if ok else 'NOT met'}."
        )
    if not missing("worst"):
        (wn, _), (wi, _) = n["worst"], i["worst"]
        lines.append(f"- Worst case over all attacks at that ε: NCEn {100 * wn:.1f}% vs independent {100 * wi:.1f}%.")
    return lines


def plot_robust(runs: list[dict], eps: Sequence[float], attacks: Sequence[str], path, title: str) -> None:
    """Robust accuracy against ε, one panel per attack, one line per method (mean, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*attacks, "worst"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), sharey=True, squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    xs = [0.0, *eps]
    for ax, attack in zip(axes[0], panels):
        for method in methods:
            rs = [r for r in runs if r["method"] == method]
            rows = [[r["clean_accuracy"]] + [r["robust_accuracy"][attack][eps_key(e)] for e in eps] for r in rs]
            mean = [sum(c) / len(c) for c in zip(*rows)]
            lo = [min(c) for c in zip(*rows)]
            hi = [max(c) for c in zip(*rows)]
            (line,) = ax.plot(xs, mean, marker="o", ms=3, label=method)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_title(attack)
        ax.set_xlabel("ε (fraction of each feature's range)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (mean, min–max over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_transfer(runs: list[dict], path, title: str) -> None:
    """Seed-averaged member-to-member transfer matrices, one panel per ensemble method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r["method"] for r in runs) if not METHODS[m].single]
    if not methods:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.4), squeeze=False)
    for k, (ax, method) in enumerate(zip(axes[0], methods)):
        mats = [r["transfer_matrix"] for r in runs if r["method"] == method]
        m = len(mats[0])
        avg = [[mean_std([mat[i][j] for mat in mats])[0] or 0.0 for j in range(m)] for i in range(m)]
        im = ax.imshow(avg, vmin=0, vmax=1, cmap="viridis")
        for i in range(m):
            for j in range(m):
                ax.text(j, i, f"{avg[i][j]:.2f}", ha="center", va="center", color="w" if avg[i][j] < 0.6 else "k",
                        fontsize=8)
        ax.set_title(method)
        ax.set_xlabel("evaluated on member j")
        if k == 0:
            ax.set_ylabel("crafted on member i")
        ax.set_xticks(range(m))
        ax.set_yticks(range(m))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def results_document(data, cfg, runs: list[dict], tie_in: dict | None, seconds: float, command: str) -> dict:
    """Everything results.json holds."""
    from dataclasses import asdict

    from .data import EPS_FRACTIONS

    return {
        "data": data.name,
        "command": command,
        "n_train": int(data.x_train.shape[0]),
        "n_test": int(data.x_test.shape[0]),
        "features": data.features,
        "classes": data.classes,
        "eps": list(cfg.eps),
        "headline_eps": cfg.headline_eps,
        "eps_rule": {"class_mean_linf_median": data.scale, "fractions": list(EPS_FRACTIONS),
                     "note": "eps in box coordinates (fraction of each feature's range); default grid = "
                             "scale x fractions, headline = the middle entry"},
        "train": asdict(cfg.train),
        "attacks": list(cfg.attacks),
        "steps": cfg.steps,
        "methods": list(cfg.methods),
        "seeds": list(cfg.seeds),
        "weights": {m: asdict(w) for m, w in cfg.weights.items()},
        "wall_seconds": seconds,
        "summary": {m: {k: list(v) if isinstance(v, tuple) else v for k, v in row.items()}
                    for m, row in summarize(runs, cfg.headline_eps, cfg.attacks).items()},
        "runs": runs,
        "tie_in": tie_in,
    }


DATA_TEXT = {
    "digits": "sklearn digits (1,797 8×8 images, pixels / 16 ∈ [0, 1]), label = the digit",
    "plays": "frozen MiniLM (all-MiniLM-L6-v2) embeddings of 400 spoken lines from each of 8 plays, label = "
             "the play; **attacks in embedding space**: each of the 384 features mapped onto [0, 1] by its "
             "minimum and maximum over the data set, ε a fraction of that range",
}


def _tie_in_markdown(tie: dict, runs: list[dict]) -> list[str]:
    se, fpe = tie["sparse_expansion"], tie["fpe"]
    lines = [
        "## Tie-in: are Sparse Expansion experts or FPE children negatively correlated members?",
        "",
        "Same two questions as for the ensembles: the mean pairwise cosine of members' input gradients, and "
        "the first-order transfer ratio sign(∇f_a)·∇f_b / ‖∇f_b‖₁ (how far the L∞-optimal first-order "
        "perturbation against member a moves member b, relative to b's own: 1 = as far, 0 = not at all, "
        "< 0 = the other way). Experts: member e maps the linear's input x to W_e x, scalar f_e = rᵀW_e x for "
        "random unit r (64 draws, shared by all experts; router ignored). FPE: the α = 2 children of one parent "
        "neuron, f = the child's pre-activation as a function of the network's input.",
        "",
        "| members | pairs | gradient cosine | first-order transfer |",
        "|---|---|---|---|",
    ]
    for method in ("ncen", "independent", "adp", "gal"):
        rs = [r for r in runs if r["method"] == method and r.get("first_order_transfer") is not None]
        if rs:
            c = mean_std([r["gradient_cosine"] for r in rs])[0]
            t = mean_std([r["first_order_transfer"] for r in rs])[0]
            m = len(rs[0]["member_clean_accuracy"])
            lines.append(f"| `{method}` ensemble members (CE gradients, test set, {len(rs)} seeds) "
                         f"| {m * (m - 1) // 2} | {c:+.3f} | {t:+.3f} |")
    for name, st in se["linears"].items():
        a, d, r = st["among_experts"], st["expert_vs_dense"], st["random_matrices"]
        lines.append(f"| SE experts, layer {se['layer']} {name} ({st['experts']} experts, density "
                     f"{st['expert_density']:.2f}, kept-weight Jaccard {st['mask_jaccard']:.2f} vs "
                     f"{st['mask_jaccard_random']:.2f} for random masks) | {a['pairs']} | "
                     f"{a['gradient_cosine']:+.3f} | {a['transfer_ratio']:+.3f} |")
        lines.append(f"| — each expert vs its dense parent | {st['experts']} | {d['gradient_cosine']:+.3f} | "
                     f"{d['transfer_ratio']:+.3f} |")
        lines.append(f"| — control: independent Gaussian matrices, same shape | {r['pairs']} | "
                     f"{r['gradient_cosine']:+.3f} | {r['transfer_ratio']:+.3f} |")
    for layer, st in fpe["layers"].items():
        s, n = st["siblings"], st["non_siblings"]
        lines.append(f"| FPE sibling children, hidden layer {layer} | {s['pairs']} | {s['gradient_cosine']:+.3f} | "
                     f"{s['transfer_ratio']:+.3f} |")
        lines.append(f"| — control: non-sibling pairs, same layer | {n['pairs']} | {n['gradient_cosine']:+.3f} | "
                     f"{n['transfer_ratio']:+.3f} |")
    lines += [
        "",
        f"Sparse Expansion model: {se['model']}; {se['experts']} experts at sparsity {se['sparsity']} "
        f"(expansion {se['expand_seconds']:.1f} s). FPE: digits, parent width {fpe['hidden_parent']} at both "
        f"hidden layers, α = {fpe['alpha']}, random split, FPE's own schedule (test accuracy "
        f"{100 * fpe['test_accuracy']:.1f}%). Layer-0 FPE children have disjoint input masks, so their gradients "
        "are orthogonal by construction; layer 1 is a measurement.",
        "",
    ]
    return lines


def report_markdown(result: dict) -> str:
    runs = result["runs"]
    attacks = result["attacks"]
    headline = result["headline_eps"]
    summary = {m: {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
               for m, row in result["summary"].items()}
    t = result["train"]
    w = result["weights"]
    weights = "; ".join(f"{m}: " + ", ".join(f"{k} = {v}" for k, v in ws.items()) for m, ws in w.items() if ws)
    eps_text = ", ".join(f"{e:g}" for e in result["eps"])
    seeds = result["seeds"]
    lines = [
        f"# NCEn on `{result['data']}` ({result['wall_seconds'] / 60:.1f} min wall)",
        "",
        f"`{result['command']}`",
        "",
        f"Data: {DATA_TEXT[result['data']]}; stratified 75/25 split (fixed), {result['n_train']} train / "
        f"{result['n_test']} test. Ensembles of M = {t['members']} {t['arch'].upper()} members (width "
        f"{t['hidden']}, {t['depth']} hidden layers for MLPs), averaged in probability; `single` is one network "
        f"with the ensemble's parameter count. Adam lr {t['lr']}, batch {t['batch_size']}, {t['epochs']} epochs, "
        f"weight decay {t['weight_decay']}; seeds {', '.join(map(str, seeds))} (initialisation and batch order). "
        f"Method weights: {weights}.",
        "",
        f"Attacks (torchattacks, untargeted L∞, white-box on the whole ensemble's log p̄): {', '.join(attacks)}; "
        f"{result['steps']} steps for PGD/APGD. ε ∈ {{{eps_text}}} as fractions of each feature's range: the "
        f"data's median L∞ distance between class means ({result['eps_rule']['class_mean_linf_median']:.3f}) "
        f"× 1/32 … 1/2; headline ε = {headline:g}. `worst` = per example, the worst of all attacks. Transfer: "
        "PGD at the headline ε made on member i, shown to member j, among examples j gets right and that fool i; "
        "the rate is the mean off-diagonal entry. Gradient cosine: mean pairwise cosine of the members' CE input "
        "gradients on the test set. Mean ± sample std over seeds.",
        "",
        f"## Results at ε = {headline:g}",
        "",
        results_table(summary, attacks, headline),
        "",
        "## Verdict on the issue's targets (NCEn against the independent ensemble)",
        "",
        *verdict(summary, headline),
    ]
    if len(seeds) < 2:
        lines.append("- One seed only: no spread, so these are plain comparisons.")
    lines += [
        "",
        "## PGD accuracy at every ε",
        "",
        curve_table(runs, "pgd", result["eps"]),
        "",
        "![robust accuracy](robust_accuracy.png)",
        "",
        "![transfer matrices](transfer_matrices.png)",
        "",
    ]
    if result.get("tie_in"):
        lines += _tie_in_markdown(result["tie_in"], runs)
    return "\n".join(lines)
