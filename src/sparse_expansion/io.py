"""Where files go: atomic output folders, the cache folder, and small JSON helpers.

Every command that writes results writes them into a temporary sibling of `--out`, named
`.<out>.tmp-<pid>-<random>`, renamed to `--out` only when complete. A run killed outright (SIGKILL,
power loss) cannot clean up after itself; the next run aimed at the same folder removes what dead
processes left and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UsageError


def cache_dir() -> Path:
    """Where converted models, tokenised corpora and embeddings are kept (`$SPARSE_EXPANSION_CACHE`,
    default ~/.cache/sparse_expansion)."""
    root = os.environ.get("SPARSE_EXPANSION_CACHE") or Path.home() / ".cache" / "sparse_expansion"
    return Path(root)


def check_output_dir(out: str | os.PathLike) -> Path:
    """Refuse, before any work, an --out that holds anything (we never mix new results with old
    ones) or that cannot be created and renamed into place."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--out {path} already exists and is not empty; choose a new folder or remove it")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path} cannot be written: {ancestor} is not a writable folder; "
                         "choose another place")
    return path


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary folders that killed runs aimed at `path` left behind; returns them."""
    removed = []
    parent = path.absolute().parent
    if not parent.is_dir():
        return removed
    for candidate in parent.glob(_tmp_prefix(path) + "*"):
        pid = candidate.name[len(_tmp_prefix(path)):].split("-", 1)[0]
        if candidate.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder that is renamed to `out` only if the block succeeds.

    A crash or a bad input half-way leaves nothing at `out`.
    """
    path = check_output_dir(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(path):
        print(f"removed {stale}, left by a run that was killed", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
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
