"""Where files go: atomic output folders, the cache folder, and small JSON helpers.

Every command that writes results writes them into a temporary sibling of `--out`, named
`.<out>.tmp-<pid>-<random>`, renamed to `--out` only when complete. A run killed outright (SIGKILL,
power loss) cannot clean up after itself; the next run aimed at the same folder removes what dead
processes left and says so.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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
    ones) or that cannot be created and renamed into place.

    The answer comes from creating the temporary folder the results will be written into (what
    `os.access` approves, mkdir may still refuse: root in a container, /proc, a read-only mount).
    That folder stays reserved for `atomic_output_dir(out)` later in the same process; a run that
    stops before then removes it (`release_reserved`, called by the CLI and at exit).
    """
    path = Path(out)
    held = _RESERVED.get(path.absolute())
    if held is not None and held.tmp.is_dir():
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--out {path} already exists and is not empty; choose a new folder or remove it")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {path} cannot be written: {ancestor} is not a folder; choose another place")
    if os.environ.get("RANK", "0") != "0":
        return path  # under torchrun rank 0 alone writes, so it alone probes (and clears stale folders)
    created = [folder for folder in path.absolute().parents if not folder.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(path):
            print(f"removed {stale}, left by a run that was killed", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
    except OSError as exc:
        _remove_empty(created)
        raise UsageError(f"--out {path} cannot be written ({exc.strerror or exc}); choose another place") from None
    _RESERVED[path.absolute()] = _Reservation(tmp, created)
    return path


@dataclass
class _Reservation:
    tmp: Path  # the temporary folder the results go into
    created: list[Path]  # the missing parents check_output_dir made, deepest first


_RESERVED: dict[Path, _Reservation] = {}


def release_reserved() -> None:
    """Remove the temporary folders (and the parents made for them) of outputs that were checked
    but never written: the run stopped before its results existed."""
    while _RESERVED:
        _, held = _RESERVED.popitem()
        shutil.rmtree(held.tmp, ignore_errors=True)
        _remove_empty(held.created)


atexit.register(release_reserved)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


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
    """Yield the temporary sibling folder of `out` (made by `check_output_dir`, called first if it
    was not), renamed to `out` only if the block succeeds.

    A crash or a bad input half-way leaves nothing at `out`; a write that fails (disk full, the
    folder taken meanwhile, a read-only mount) is a one-line UsageError, and nothing is left.
    """
    path = check_output_dir(out)
    held = _RESERVED.pop(path.absolute())
    tmp = held.tmp
    try:
        yield tmp
        _default_permissions(tmp)
        if path.exists():
            path.rmdir()  # empty when checked; refused (OSError) if something appeared since
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(held.created)
        if _is_write_error(exc, tmp, path):
            raise UsageError(f"writing {path} failed ({getattr(exc, 'strerror', None) or exc}); nothing was "
                             "saved there: free space or choose another --out") from None
        raise


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


def _is_write_error(exc: BaseException, tmp: Path, path: Path) -> bool:
    """An OSError about the output itself (its folder, a file in it) or one that only writing
    raises; other errors (a bad input file read inside the block) keep their own message."""
    if type(exc).__name__ == "SafetensorError":  # safetensors wraps its I/O errors
        return "io" in str(exc).lower()
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _WRITE_ERRNOS:
        return True
    names = [Path(os.fsdecode(n)).absolute() for n in (exc.filename, exc.filename2) if n is not None]
    return any(n == p or p in n.parents for n in names for p in (tmp.absolute(), path.absolute()))


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
