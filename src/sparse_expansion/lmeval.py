"""Zero-shot scores with EleutherAI's lm-evaluation-harness, on any model this library loads.

`evaluate_tasks(model, tokenizer, tasks)` wraps the loaded model (dense, pruned or expanded: an
expanded model is still the Hugging Face model, with its MLP linears replaced) in lm-eval's own
`HFLM`, so the scores are computed by lm-eval exactly as for any Hugging Face model: the numbers
the SparseGPT, Wanda and OWL papers report (arc_easy, hellaswag, piqa, winogrande, ...) when the
dataset hub is reachable.

Offline, `shakespeare_next_line` is built in: a multiple-choice task written on the fly from the
held-out plays (shakespeare:test): given up to three consecutive lines of one speech, pick the line
that follows them among four (the three others are lines drawn from elsewhere in the same plays).
Chance is 25%. It is an
ordinary lm-eval task (YAML + a JSONL data file read by the `json` dataset builder), so it also
shows how to run lm-eval on any local data.

lm-eval is an optional dependency (`pip install '.[eval]'`); without it every call here is a
one-line UsageError saying so.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from .errors import UsageError

NEXT_LINE_TASK = "shakespeare_next_line"
BUILTIN_TASKS = (NEXT_LINE_TASK,)
PAPER_TASKS = "arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,openbookqa,rte"


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError("lm-eval is not installed; install it with `pip install '.[eval]'` "
                         "(or `pip install lm_eval`)") from None


# -------------------------------------------------------------------------- the built-in task


def verse_lines(text: str, min_words: int = 4) -> list[list[str]]:
    """Runs of consecutive spoken lines (speech blocks), each line with at least `min_words` words.

    Speaker names, stage directions in brackets and blank lines end a run, so a pair of adjacent
    lines in one run is a line and its true continuation within one speech.
    """
    runs: list[list[str]] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        spoken = (len(line.split()) >= min_words and not line.startswith(("[", "(")) and not line.isupper()
                  and not re.fullmatch(r"[A-Z][\w' ]*\.", line))
        if spoken:
            current.append(line)
        else:
            if len(current) >= 2:
                runs.append(current)
            current = []
    if len(current) >= 2:
        runs.append(current)
    return runs


def next_line_questions(documents: dict[str, str], n: int, seed: int = 0, choices: int = 4,
                        context_lines: int = 3) -> list[dict]:
    """`n` questions {context, choices, label}: up to `context_lines` consecutive lines of one speech,
    the line that follows them, and `choices - 1` lines drawn at random from the same documents
    (never a context line or the answer itself)."""
    rng = random.Random(seed)
    items = [(run[max(0, i + 1 - context_lines): i + 1], run[i + 1]) for name in sorted(documents)
             for run in verse_lines(documents[name]) for i in range(len(run) - 1)]
    pool = sorted({line for _, answer in items for line in (answer,)} | {line for ctx, _ in items for line in ctx})
    if len(items) < n or len(pool) < choices + context_lines:
        raise UsageError(f"the corpus holds {len(items)} pairs of adjacent verse lines, fewer than the "
                         f"{n} questions asked for; give a larger corpus or fewer questions")
    questions = []
    for context, answer in rng.sample(items, n):
        wrong: list[str] = []
        while len(wrong) < choices - 1:
            line = rng.choice(pool)
            if line != answer and line not in context and line not in wrong:
                wrong.append(line)
        label = rng.randrange(choices)
        options = wrong[:label] + [answer] + wrong[label:]
        questions.append({"context": "\n".join(context), "choices": options, "label": label})
    return questions


def write_next_line_task(folder: str | Path, corpus: str = "shakespeare:test", n: int = 500,
                         seed: int = 0) -> Path:
    """Write the `shakespeare_next_line` task (YAML + JSONL) into `folder`; returns the folder,
    ready to pass to lm-eval as an include path (`--include_path` of its own CLI)."""
    from .data import corpus_documents

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{NEXT_LINE_TASK}.jsonl"
    with data.open("w") as handle:
        for question in next_line_questions(corpus_documents(corpus), n, seed):
            handle.write(json.dumps(question) + "\n")
    # A document is scored by the log-likelihood of each choice after "context\n"; acc_norm divides
    # by the choice's length in bytes, so long lines are not penalised for their length alone.
    yaml = "\n".join([
        f"task: {NEXT_LINE_TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data.resolve()))}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "{{context}}\\n"',
        "doc_to_choice: choices",
        "doc_to_target: label",
        'target_delimiter: ""',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        f"  corpus: {json.dumps(corpus)}",
        f"  seed: {seed}",
        "",
    ])
    (folder / f"{NEXT_LINE_TASK}.yaml").write_text(yaml)
    return folder


# ------------------------------------------------------------------------------ running tasks


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise UsageError("--tasks is empty; name at least one task, e.g. --tasks arc_easy,hellaswag")
    return tasks


def task_manager(tasks: list[str], include_paths: list[str | Path]) -> Any:
    """lm-eval's TaskManager over its own tasks plus `include_paths`, after checking that every
    requested task (or group, tag, or glob pattern) exists there."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not Path(path).is_dir():
            raise UsageError(f"--include-path {path} is not a folder of lm-eval task YAML files")
    paths = [str(p) for p in include_paths]
    # Indexing lm-eval's own few thousand task files takes seconds: skip it when the local folders
    # already hold every requested task.
    manager = TaskManager(include_path=paths, include_defaults=False) if paths else None
    if manager is None or not all(manager.match_tasks([t]) for t in tasks):
        manager = TaskManager(include_path=paths or None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise UsageError(f"unknown lm-eval task {', '.join(unknown)}; built in here: {', '.join(BUILTIN_TASKS)}; "
                         "lm-eval's own are listed by `lm-eval ls tasks`")
    return manager


def evaluate_tasks(model: Any, tokenizer: Any, tasks: list[str], *, manager: Any, limit: int | None = None,
                   num_fewshot: int | None = None, batch_size: int = 8, max_length: int | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """lm-eval scores of an already loaded model: {"results": {task: {metric: value}}, "n_samples",
    "versions", "config"}. `limit` caps the documents per task (a quick check, not a score)."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if not hasattr(tokenizer, "pad_token"):
        raise UsageError("lm-eval needs a Hugging Face causal language model with its tokenizer; "
                         "this folder holds another kind of model")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                          log_samples=False, bootstrap_iters=0 if limit else 1000, random_seed=seed,
                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if out is None:  # only on non-zero ranks of a distributed run
        return {}
    return {"results": _plain(out.get("results", {})), "groups": _plain(out.get("groups", {})),
            "n_samples": _plain(out.get("n-samples", {})), "versions": _plain(out.get("versions", {})),
            "limit": limit, "num_fewshot": num_fewshot}


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to floats, 'N/A' stderrs kept as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def score_rows(results: dict[str, Any]) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, stderr or None) for every numeric metric, sorted by task."""
    rows = []
    for task in sorted(results.get("results", {})):
        metrics = results["results"][task]
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name.endswith("_stderr") or not isinstance(value, (int, float)) or name == "sample_len":
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            rows.append((task, name, float(value), float(stderr) if isinstance(stderr, (int, float)) else None))
    return rows
