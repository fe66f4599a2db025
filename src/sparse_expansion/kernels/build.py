"""Compile the C++ kernels once, cache them, and load them; or say in one line why not.

The build goes to `$SPARSE_EXPANSION_CACHE/kernels/<key>/` (default `~/.cache/sparse_expansion`),
where the key hashes the C++ sources, torch and Python versions, the compiler's path, the flags
and the CPU architecture: a later process loads the finished library without calling a
compiler, and changing any of those builds afresh. Two processes building at once wait on one
file lock; a thread lock does the same inside a process. A failed build is remembered in
`<key>/FAILED` so every later process does not pay for it again (delete it, or set
`SPARSE_EXPANSION_KERNELS=cpp`, to retry).

No `-march=native`: the AVX2 code is selected at run time (csrc/avx2.cpp), so one cached build
also runs on an older CPU that shares the cache directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("ops.cpp", "scalar.cpp", "avx2.cpp", "avx512.cpp", "decode_step.cpp", "step_kernels.cpp",
           "quant_torch.cpp", "quant_scalar.cpp", "quant_avx512.cpp", "quant_act8.cpp")
HEADERS = ("sparse.h", "step.h", "quant.h", "passes.h")
# OpenMP makes at::parallel_for (inlined from torch's headers) actually parallel; the library
# then shares torch's own OpenMP runtime, so torch.set_num_threads applies.
_OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]
# No contraction of a * b + c into one fused multiply-add unless the source asks for it (intrinsics): the
# quantized kernels define their sums as separate products and additions (csrc/quant.h), equal bit for
# bit on every path, which GCC's default (contract whenever the target has FMA) would break.
CFLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", *_OPENMP]
LDFLAGS = [*_OPENMP]


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded; the message says why in one line."""


def cache_root() -> Path:
    from ..io import cache_dir

    return cache_dir() / "kernels"


def find_compiler() -> str | None:
    """The C++ compiler torch would call (`$CXX`, else `c++`), resolved on PATH; None if absent."""
    found = shutil.which(os.environ.get("CXX", "c++"))
    return os.path.realpath(found) if found else None


def build_key(compiler: str) -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    for part in (torch.__version__, sys.version, compiler, platform.machine(), " ".join(CFLAGS + LDFLAGS)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (POSIX); elsewhere torch's own build baton has to do."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_library(name: str, library: Path) -> ModuleType:
    """Load a finished build; a library that will not load is a build error, not a crash."""
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {library}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:
        raise KernelBuildError(f"cached kernels {library} do not load ({error}); delete {library.parent}") from error
    return module


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch calls `ninja` from PATH; the pip package's copy is not there unless the venv is active."""
    if shutil.which("ninja"):
        yield
        return
    try:
        import ninja

        folder = ninja.BIN_DIR
    except (ImportError, AttributeError):
        folder = os.path.dirname(sys.executable)
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = folder + os.pathsep + before
    try:
        yield
    finally:
        os.environ["PATH"] = before


def _compile(name: str, folder: Path) -> ModuleType:
    from torch.utils import cpp_extension

    with _ninja_on_path(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about compiler versions; the caller reports one line
        module = cpp_extension.load(name, [str(CSRC / s) for s in SOURCES], extra_cflags=CFLAGS,
                                    extra_ldflags=LDFLAGS, extra_include_paths=[str(CSRC)],
                                    build_directory=str(folder), verbose=False)
    return module


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    lines = [line for line in text if "error:" in line.lower()] or text or [type(error).__name__]
    return lines[0][:200]


def build(retry_failed: bool = False) -> ModuleType:
    """The compiled kernels, building them first if this key has never been built.

    Raises KernelBuildError when there is no compiler or the build fails."""
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError(f"no C++ compiler found (CXX={os.environ.get('CXX', 'c++')})")
    key = build_key(compiler)
    name = f"sparse_expansion_kernels_{key}"
    folder = cache_root() / key
    ready, failed = folder / "READY", folder / "FAILED"
    if ready.is_file():
        return _import_library(name, folder / ready.read_text().strip())
    try:  # an unwritable cache is a failed build (the torch fallback runs), not a crash
        folder.mkdir(parents=True, exist_ok=True)
        (cache_root() / f"{key}.lock").touch()
    except OSError as error:
        raise KernelBuildError(f"the kernel cache {folder} cannot be written ({error.strerror or error}); "
                               "set SPARSE_EXPANSION_CACHE to a writable folder") from None
    with _file_lock(cache_root() / f"{key}.lock"):
        if ready.is_file():  # another process finished while we waited
            return _import_library(name, folder / ready.read_text().strip())
        if failed.is_file() and not retry_failed:
            raise KernelBuildError(f"an earlier build failed ({failed.read_text().strip()}); see {failed}")
        try:
            module = _compile(name, folder)
        except Exception as error:  # the build's own output is in its message; keep its first error
            reason = _first_line(error)
            failed.write_text(reason + "\n")
            raise KernelBuildError(f"C++ build failed: {reason}") from error
        failed.unlink(missing_ok=True)
        tmp = folder / "READY.tmp"
        tmp.write_text(Path(module.__file__).name + "\n")
        os.replace(tmp, ready)
        return module


_LOCK = threading.Lock()
_RESULT: ModuleType | KernelBuildError | None = None


def kernels(retry_failed: bool = False) -> ModuleType:
    """`build()` once per process (thread-safe); later calls return or raise the same result."""
    global _RESULT
    with _LOCK:
        if _RESULT is None or (retry_failed and isinstance(_RESULT, KernelBuildError)):
            try:
                _RESULT = build(retry_failed)
            except KernelBuildError as error:
                _RESULT = error
        result = _RESULT
    if isinstance(result, KernelBuildError):
        raise result
    return result
