"""Building, caching and falling back: no compiler or a failing one gives one warning and the
torch fallback's (correct) answers; concurrent builders compile once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

import sparse_expansion
from sparse_expansion.kernels import build

SRC = str(Path(sparse_expansion.__file__).parents[1])

SCRIPT = """
import torch
from sparse_expansion.kernels import compress, decompress, sparse_linear, backend
torch.manual_seed(0)
w = torch.randn(7, 24)
w[w.abs() < 0.7] = 0
weight = compress(w, "bitmask", torch.float32)
x = torch.randn(3, 24)
for _ in range(3):
    y = sparse_linear(x, weight)
assert torch.allclose(y, x @ decompress(weight).t(), atol=1e-5), "wrong answer"
print("backend", backend())
"""


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "SPARSE_EXPANSION_KERNELS"}
    full_env.update(PYTHONPATH=SRC, SPARSE_EXPANSION_CACHE=str(tmp_path / "cache"), **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "false"])
def test_failed_build_falls_back_with_one_warning(tmp_path, cxx):
    done = run_python(SCRIPT, tmp_path, CXX=cxx)
    assert done.returncode == 0, done.stderr
    assert "backend torch" in done.stdout
    warning_lines = [line for line in done.stderr.splitlines() if "KernelFallbackWarning" in line]
    assert len(warning_lines) == 1, done.stderr
    assert "pure-torch fallback" in warning_lines[0]
    if cxx == "false":  # a compiler that exists but fails: remembered, not retried by the next process
        assert list((tmp_path / "cache" / "kernels").glob("*/FAILED"))
        again = run_python(SCRIPT, tmp_path, CXX=cxx)
        assert again.returncode == 0 and "an earlier build failed" in again.stderr


def test_forcing_cpp_without_a_compiler_raises(tmp_path):
    done = run_python(SCRIPT, tmp_path, CXX="/nonexistent/c++", SPARSE_EXPANSION_KERNELS="cpp")
    assert done.returncode != 0 and "KernelBuildError" in done.stderr and "no C++ compiler" in done.stderr


def test_forcing_torch_never_builds_or_warns(tmp_path):
    done = run_python(SCRIPT, tmp_path, SPARSE_EXPANSION_KERNELS="torch")
    assert done.returncode == 0 and "backend torch" in done.stdout
    assert "Warning" not in done.stderr and not (tmp_path / "cache" / "kernels").exists()


def test_concurrent_builders_compile_once(tmp_path, monkeypatch):
    """Two threads (each with its own lock file handle, as two processes have) build one key."""
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", str(tmp_path))
    compiled, imported = [], []

    def fake_compile(name, folder):
        compiled.append(name)
        time.sleep(0.3)  # long enough for the other builder to reach the lock
        library = folder / f"{name}.so"
        library.write_bytes(b"")
        return types.SimpleNamespace(__file__=str(library))

    monkeypatch.setattr(build, "_compile", fake_compile)
    monkeypatch.setattr(build, "_import_library", lambda name, path: imported.append(path) or path)
    monkeypatch.setattr(build, "find_compiler", lambda: "/usr/bin/c++")
    threads = [threading.Thread(target=build.build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(compiled) == 1 and len(imported) == 1  # the second waited, then loaded the first's library
    key = build.build_key("/usr/bin/c++")
    assert (tmp_path / "kernels" / key / "READY").read_text().strip() == f"sparse_expansion_kernels_{key}.so"


def test_build_key_changes_with_the_compiler():
    assert build.build_key("/usr/bin/g++") != build.build_key("/usr/bin/clang++")
    assert build.build_key("/usr/bin/g++") == build.build_key("/usr/bin/g++")


def test_a_cached_library_that_does_not_load_is_a_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "find_compiler", lambda: "/usr/bin/c++")
    folder = tmp_path / "kernels" / build.build_key("/usr/bin/c++")
    folder.mkdir(parents=True)
    (folder / "broken.so").write_bytes(b"not a library")
    (folder / "READY").write_text("broken.so\n")
    with pytest.raises(build.KernelBuildError, match="do not load"):
        build.build()
