"""`sparse-expansion lm-eval`: lm-evaluation-harness scores of any model this library loads."""

from __future__ import annotations

import json
import sys
import tempfile

from .. import runtime
from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    from ..lmeval import BUILTIN_TASKS, PAPER_TASKS

    p = subparsers.add_parser(
        "lm-eval", help="zero-shot scores with lm-evaluation-harness (dense, pruned or expanded models)",
        description="Score a model with EleutherAI's lm-evaluation-harness through its HFLM wrapper. "
                    f"Offline, the built-in task {BUILTIN_TASKS[0]} (pick the next line of verse of the "
                    "held-out plays among four) needs no dataset hub.",
        epilog=f"examples: sparse-expansion lm-eval runs/sg50 --tasks {BUILTIN_TASKS[0]}; online: "
               f"sparse-expansion lm-eval runs/sg50 --tasks {PAPER_TASKS}")
    common.add_model_arg(p, "MODEL_OR_DIR")
    p.add_argument("--tasks", required=True,
                   help=f"comma-separated lm-eval tasks, groups or patterns (built in: {', '.join(BUILTIN_TASKS)})")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N documents per task (a quick check; full tasks give the real score)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's own)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a folder of your own lm-eval task YAML files (repeatable; default none)")
    p.add_argument("--questions", type=int, default=500,
                   help="questions written for the built-in task (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in task and of lm-eval (default 0)")
    p.add_argument("--out", default=None, help="folder to write results.json into (must not exist or be empty)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    runtime.add_runtime_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io import atomic_output_dir, check_output_dir, write_json
    from ..lmeval import NEXT_LINE_TASK, evaluate_tasks, parse_tasks, require_lm_eval, score_rows, task_manager
    from ..lmeval import write_next_line_task as write_task
    from ..models import load_causal_lm, resolve_model_path

    tasks = parse_tasks(args.tasks)
    if args.limit is not None:
        common.require_positive(args.limit, "--limit")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be 0 or more (got {args.num_fewshot})")
    common.require_positive(args.batch_size, "--batch-size")
    common.require_positive(args.questions, "--questions")
    if args.out is not None:
        check_output_dir(args.out)
    rt = runtime.setup(args.device, args.dtype)
    resolve_model_path(args.model)  # a missing model is refused before lm-eval indexes its tasks
    require_lm_eval()
    with tempfile.TemporaryDirectory(prefix="sparse-expansion-tasks-") as builtin:
        include = list(args.include_path)
        if any(t == NEXT_LINE_TASK for t in tasks):
            include.append(str(write_task(builtin, n=args.questions, seed=args.seed)))
        manager = task_manager(tasks, include)
        model, tokenizer = load_causal_lm(args.model, rt.device, rt.dtype)
        result = evaluate_tasks(model, tokenizer, tasks, manager=manager, limit=args.limit,
                                num_fewshot=args.num_fewshot, batch_size=args.batch_size, seed=args.seed)
    result = {"model": args.model, "tasks": tasks, **result}
    if args.out is not None:
        with atomic_output_dir(args.out) as tmp:
            write_json(tmp / "results.json", result)
    lines = [f"{task:<28} {metric:<10} {value:.4f}" + (f" ± {stderr:.4f}" if stderr else "")
             for task, metric, value, stderr in score_rows(result)]
    if args.limit:
        lines.append(f"(--limit {args.limit}: at most {args.limit} documents per task, a check, not a score)")
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    return 0
