"""Expert solves spread over 2 CPU ranks (torchrun, gloo) give the same saved model as 1 process."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path, tiny_model_dir, text_file):
    common = ["expand", str(tiny_model_dir), "--experts", "3", "--sparsity", "0.5", "--calib", str(text_file),
              "--calib-windows", "4", "--seqlen", "32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "sparse_expansion.cli", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found beside the interpreter"
    double = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                             str(free_port()), "-m", "sparse_expansion.cli", *common, "--out", str(tmp_path / "two")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys() and any("experts.values" in k for k in a)
    for key in a:
        assert (a[key] == b[key]).all(), key
    assert '"ranks": 2' in (tmp_path / "two" / "sparse_expansion.json").read_text()
