"""Training checkpoints: everything a run needs to continue exactly, written atomically.

`OUT.ckpt/step-000000040/` holds

    sparse_expansion.json + model.safetensors   the model, as every saved model (artifact.py)
    optimizer.safetensors + optimizer.json      AdamW moments ("<index>.<key>"), param groups and
                                                the parameter name of each index
    state.json                                  step, loss history, wall time, the LMTrainConfig

A checkpoint is written into a hidden temporary folder that is renamed into place only when
complete, and older checkpoints are removed after that, so a crash at any moment leaves a whole
checkpoint behind. Reading takes the newest complete one and checks everything it reads: a
truncated or corrupt file, or one that does not fit the model, is a one-line UsageError.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifact import load_artifact, save_artifact
from ..errors import UsageError
from ..io import read_json, write_json
from .transformer import Transformer

_STEP = re.compile(r"step-(\d+)")
STATE_KEYS = {"step": int, "history": list, "wall_seconds": (int, float), "train_config": dict}
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class Checkpoint:
    """A checkpoint as read from disk, checked, not yet applied to a model."""

    folder: Path
    step: int
    history: list[float]
    wall_seconds: float
    train_config: dict[str, Any]
    model: Transformer
    optimizer_state: dict[int, dict[str, torch.Tensor]]
    param_groups: list[dict[str, Any]]
    param_names: list[str]

    def check_config(self, train_config: dict[str, Any]) -> None:
        """Refuse to continue a run with other settings (the run would not be the one asked for)."""
        if self.train_config != json.loads(json.dumps(train_config)):
            changed = sorted(k for k in set(self.train_config) | set(train_config)
                             if self.train_config.get(k) != json.loads(json.dumps(train_config.get(k))))
            raise UsageError(f"checkpoint in {self.folder.parent} was made with a different config "
                             f"({', '.join(changed)} differ); use the same flags or a new --out")

    def apply(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Load the weights and optimizer state into a freshly built model and optimizer."""
        try:
            model.load_state_dict(self.model.state_dict(), strict=True)
        except RuntimeError as exc:
            raise UsageError(f"checkpoint {self.folder} holds another model than this run builds: "
                             f"{str(exc).splitlines()[0][:200]}") from None
        if parameter_names(model, opt) != self.param_names:
            raise UsageError(f"checkpoint {self.folder}: its optimizer state is for other parameters "
                             "than this run's; delete the checkpoint or use a new --out")
        opt.load_state_dict({"state": self.optimizer_state, "param_groups": self.param_groups})


def parameter_names(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the optimizer's own order (its state_dict indices)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in opt.param_groups for p in group["params"]]


# --------------------------------------------------------------------------------------- writing


def save_checkpoint(root: Path, model: Transformer, opt: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint of step state["step"] under `root`; returns its folder."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{state['step']:09d}"
    final = root / name
    if final.is_dir():  # this step is saved already (a deterministic run gives the same weights)
        return final
    tmp = root / f".{name}.tmp"
    tmp.mkdir()
    save_artifact(tmp, model, record={"kind": "checkpoint", "step": state["step"]})
    osd = opt.state_dict()
    tensors = {f"{pid}.{key}": value.detach().contiguous()
               for pid, pstate in osd["state"].items() for key, value in pstate.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "optimizer.json", {"param_groups": osd["param_groups"],
                                        "param_names": parameter_names(model, opt)})
    write_json(tmp / "state.json", state)
    os.replace(tmp, final)
    for older in complete_checkpoints(root)[:-1]:
        shutil.rmtree(older, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint folders under root, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


# --------------------------------------------------------------------------------------- reading


def load_checkpoint(root: Path) -> Checkpoint:
    """The newest complete checkpoint under root, checked; UsageError naming what is wrong."""
    folders = complete_checkpoints(root)
    if not folders:
        if (root / "state.json").is_file():
            raise UsageError(f"{root} was written by an older sparse-expansion; it cannot be resumed, "
                             "start the run again")
        raise UsageError(f"nothing to resume: no checkpoint in {root}")
    folder = folders[-1]
    state = _read_state(folder)
    model, _ = load_artifact(folder)
    if not isinstance(model, Transformer):
        raise UsageError(f"{folder} does not hold a sgatlin-study model")
    meta = read_json(folder / "optimizer.json")
    groups, names = (meta.get("param_groups"), meta.get("param_names")) if isinstance(meta, dict) \
        else (None, None)
    if not isinstance(groups, list) or not isinstance(names, list):
        raise _corrupt(folder, "optimizer.json", "no param_groups or param_names")
    moments = _read_moments(folder, model, names)
    return Checkpoint(folder, state["step"], state["history"], float(state["wall_seconds"]),
                      state["train_config"], model, moments, groups, names)


def _read_state(folder: Path) -> dict[str, Any]:
    state = read_json(folder / "state.json")
    if not isinstance(state, dict):
        raise _corrupt(folder, "state.json", "not a JSON object")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise _corrupt(folder, "state.json", f"no valid {key!r}")
    history = state["history"]
    if len(history) != state["step"] or not all(isinstance(v, (int, float)) for v in history):
        raise _corrupt(folder, "state.json", f"its loss history does not have {state['step']} values")
    return state


def _read_moments(folder: Path, model: Transformer, names: list[str]
                  ) -> dict[int, dict[str, torch.Tensor]]:
    """AdamW state per parameter index, each moment checked against the parameter's shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise _corrupt(folder, "optimizer.safetensors", str(exc).strip().splitlines()[0][:200]
                       if str(exc).strip() else type(exc).__name__) from None
    shapes = {n: p.shape for n, p in model.named_parameters()}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, _, what = key.partition(".")
        if not pid.isdigit() or int(pid) >= len(names):
            raise _corrupt(folder, "optimizer.safetensors", f"unexpected tensor {key!r}")
        state.setdefault(int(pid), {})[what] = value
    for pid, name in enumerate(names):
        entry = state.get(pid, {})  # empty: a parameter that never had a gradient
        if name not in shapes or (entry and set(entry) != {"step", *MOMENTS}) or any(
                entry[m].shape != shapes[name] or not bool(torch.isfinite(entry[m]).all())
                for m in MOMENTS if entry):
            raise _corrupt(folder, "optimizer.safetensors",
                           f"the state of parameter {name!r} is missing, misshapen or not finite")
    return state


def _corrupt(folder: Path, file: str, what: str) -> UsageError:
    return UsageError(f"cannot resume from {folder}/{file}: {what}; the checkpoint is corrupt, "
                      f"delete {folder.parent} and start the run again")
