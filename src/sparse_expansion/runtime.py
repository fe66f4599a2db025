"""Where and in what precision a command runs: the one place that decides device, dtype and the
process group.

- Device: `auto` is the GPU when CUDA is present, else the CPU; `cuda` and `cuda:i` ask for one.
  Under torchrun (LOCAL_RANK set) a CUDA rank takes GPU LOCAL_RANK (and makes it current, so NCCL
  collectives and bare `.cuda()` calls land there); more ranks than GPUs on a machine are refused
  in one line, since NCCL will not put two ranks on one GPU (seen on an H100).
- Dtype: the storage precision of the model's weights (float32, bfloat16, float16). Calibration
  statistics, the router and the SparseGPT solves always compute in float32, whatever it is.
- Process group: joined when torchrun says WORLD_SIZE > 1, NCCL for CUDA, gloo for the CPU.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_HELP = "auto (default: the GPU when CUDA is present, else cpu), cpu, cuda or cuda:I"


def add_runtime_args(parser: argparse.ArgumentParser, dtype: bool = True,
                     dtype_help: str = "storage precision of the weights", auto_dtype: str | None = None) -> None:
    """--device and --dtype, spelled the same on every command that runs a model. `auto_dtype` (the
    command's words for what "auto" picks) adds --dtype auto and makes it the default."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    if dtype and auto_dtype:
        parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPE_NAMES),
                            help=f"{dtype_help} (default auto: {auto_dtype})")
    elif dtype:
        parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES,
                            help=f"{dtype_help} (default float32)")


def resolve_dtype(name: str) -> torch.dtype:
    import torch

    if name not in DTYPE_NAMES:
        raise UsageError(f"unknown --dtype '{name}'; use {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def resolve_device(spec: str = "auto") -> str:
    """'cpu' or 'cuda:I'; refused in one line when CUDA is asked for and absent."""
    import torch

    spec = (spec or "auto").strip().lower()
    local_rank = os.environ.get("LOCAL_RANK")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise UsageError(f"unknown --device '{spec}'; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec} asked for, but no CUDA GPU is available; use --device cpu")
    count = torch.cuda.device_count()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_rank is not None and local_world > count:  # NCCL refuses two ranks on one GPU
        raise UsageError(f"torchrun started {local_world} ranks on this machine but it has {count} GPU(s): NCCL "
                         f"needs one GPU per rank; use --nproc-per-node {count} (or --device cpu)")
    if spec == "cuda":
        index = int(local_rank) if local_rank is not None else torch.cuda.current_device()
    else:
        index = int(spec[5:])
        if index >= count:
            raise UsageError(f"--device {spec}: only {count} GPU(s) present (cuda:0 to cuda:{count - 1})")
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def backend_for(device: str) -> str:
    """The process-group backend for tensors on `device`: NCCL for CUDA, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def join_process_group(device: str) -> tuple[int, int]:
    """Join the group torchrun describes (WORLD_SIZE > 1); returns (rank, world size). A group
    already set up (a test that spawns its own processes) is used as it is."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        kwargs = {}
        if device.startswith("cuda"):
            import torch

            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(backend=backend_for(device), **kwargs)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: torch.dtype
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", dtype: str = "float32", distributed: bool = False) -> Runtime:
    """Resolve device and dtype (and, when asked, join torchrun's process group) in that order."""
    resolved_dtype = resolve_dtype(dtype)
    resolved = resolve_device(device)
    rank, size = join_process_group(resolved) if distributed else (0, 1)
    return Runtime(resolved, resolved_dtype, rank, size)
