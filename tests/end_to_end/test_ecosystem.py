"""Issue 14 end to end on the shipped SmolLM2-135M: an expanded folder loads in plain transformers
(trust_remote_code, our package not importable) with our logits; a pruned folder exports to
compressed-tensors and loads back with identical logits; lm-eval scores it on the offline task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import run_cli

pytestmark = pytest.mark.real_model

SMALL_CALIBRATION = ["--calib-windows", "2", "--seqlen", "64"]

REMOTE = textwrap.dedent("""
    import sys
    sys.modules["sparse_expansion"] = None  # plain transformers only
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids_path, out = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    ids = torch.load(ids_path)
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    torch.save({"logits": logits, "tokens": tokens}, out)
""")


def test_expanded_smollm2_loads_in_plain_transformers(tmp_path, capsys):
    from sparse_expansion.models import load_model

    folder = tmp_path / "se"
    code, _, err = run_cli(["expand", "smollm2-135m", "--experts", "2", "--sparsity", "0.5", *SMALL_CALIBRATION,
                            "--out", folder], capsys)
    assert code == 0, err
    ours, tokenizer = load_model(str(folder))
    ids = torch.tensor([tokenizer("Now is the winter of our discontent")["input_ids"]])
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    proc = subprocess.run([sys.executable, "-I", "-c", REMOTE, str(folder), str(tmp_path / "ids.pt"),
                           str(tmp_path / "remote.pt")], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "remote.pt")
    with torch.no_grad():
        want = ours(ids).logits
        tokens = ours.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert (remote["logits"] - want).abs().max() <= 1e-4 * want.abs().max()
    assert torch.equal(remote["tokens"], tokens)


def test_pruned_smollm2_exports_to_compressed_tensors(tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from sparse_expansion.models import load_model

    pruned, exported = tmp_path / "sg24", tmp_path / "ct"
    code, _, err = run_cli(["prune", "smollm2-135m", "--method", "magnitude", "--sparsity", "2:4",
                            *SMALL_CALIBRATION, "--out", pruned], capsys)
    assert code == 0, err
    code, _, err = run_cli(["export", pruned, "--format", "compressed-tensors", "--out", exported], capsys)
    assert code == 0, err
    ours, tokenizer = load_model(str(pruned))
    theirs = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("To be, or not to be")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    provenance = json.loads((exported / "sparse_expansion_export.json").read_text())
    assert provenance["record"]["method"] == "magnitude"
    for name, weight in theirs.state_dict().items():  # the 2:4 pattern survives the round trip
        if name.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")):
            assert ((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all(), name


def test_lm_eval_scores_smollm2_on_the_offline_task(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    code, stdout, err = run_cli(["lm-eval", "smollm2-135m", "--tasks", "shakespeare_next_line", "--limit", "8",
                                 "--questions", "16", "--batch-size", "4", "--json", "--out", tmp_path / "scores"],
                                capsys)
    assert code == 0, err
    scores = json.loads(stdout.strip().splitlines()[-1])["results"]["shakespeare_next_line"]
    assert 0 <= scores["acc,none"] <= 1
