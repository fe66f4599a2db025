"""Atomic output folders and small JSON helpers shared by every command that writes results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UsageError


def check_output_dir(out: str | os.PathLike) -> Path:
    """Refuse an --out that exists and holds anything: we never mix new results with old ones."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--out {path} already exists and is not empty; choose a new folder or remove it")
    return path


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder that is renamed to `out` only if the block succeeds.

    A crash or a bad input half-way leaves nothing at `out`.
    """
    path = check_output_dir(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if path.exists():
            path.rmdir()  # empty by check_output_dir
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_permissions(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only (0700/0600) entries; give the finished folder the modes a
    plain mkdir/open would have had under the user's umask, so others can read a shared result."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            (Path(root) / name).chmod(0o777 & ~umask)
        for name in files:
            (Path(root) / name).chmod(0o666 & ~umask)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is missing; is this a folder written by sparse-expansion?") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg}); the folder looks corrupt") from None
