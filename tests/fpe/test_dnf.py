import json

import pytest
import torch

from sparse_expansion.artifact import read_manifest, save_artifact
from sparse_expansion.errors import UsageError
from sparse_expansion.fpe import dnf
from sparse_expansion.fpe.mlp import MaskedMLP, MLPConfig, count_nonzeros
from sparse_expansion.models import load_model


@pytest.mark.parametrize("m", [4, 8, 16, 32])
def test_generator_balanced_and_labels_right(m):
    task = dnf.make_task(32, m, 3, seed=1)
    x, y = dnf.sample(task, 1000, seed=2)
    assert x.shape == (1000, 32) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert int(y.sum()) == 500
    bits = ((x + 1) / 2).long()
    assert torch.equal(task.label(bits), y)


def test_generator_seeded():
    a, b = dnf.make_task(32, 8, 3, seed=4), dnf.make_task(32, 8, 3, seed=4)
    assert a == b and a != dnf.make_task(32, 8, 3, seed=5)
    xa, ya = dnf.sample(a, 200, seed=7)
    xb, yb = dnf.sample(b, 200, seed=7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = dnf.sample(a, 200, seed=8)
    assert not torch.equal(xa, xc)


def test_clauses_disjoint_when_they_fit():
    task = dnf.make_task(32, 8, 3, seed=0)
    used = [v for c in task.clauses for v in c]
    assert len(used) == len(set(used)) == 24
    assert all(len(set(c)) == 3 for c in dnf.make_task(32, 32, 3, seed=0).clauses)


def test_every_clause_gets_positives():
    task = dnf.make_task(32, 8, 3, seed=0)
    x, y = dnf.sample(task, 2000, seed=0)
    sat = task.satisfied(((x + 1) / 2).long())
    assert bool((sat[y == 1].sum(dim=0) > 100).all())
    assert not bool(sat[y == 0].any())


def test_sample_rejects_odd_size():
    with pytest.raises(ValueError):
        dnf.sample(dnf.make_task(8, 2, 2, seed=0), 11, seed=0)


def test_saved_then_loaded_mlp_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = MaskedMLP(MLPConfig(6, (4, 3), 2))
    with torch.no_grad():
        model.layers[0].set_mask((torch.rand(4, 6) > 0.5).float())
    save_artifact(tmp_path / "m", model, record={"rule": "random", "seed": 0})
    again, tokenizer = load_model(str(tmp_path / "m"))
    assert tokenizer is None and isinstance(again, MaskedMLP) and again.config == model.config
    x = torch.randn(5, 6)
    assert torch.equal(model(x), again(x))
    for a, b in zip(model.layers, again.layers, strict=True):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert count_nonzeros(again) == count_nonzeros(model)
    manifest = read_manifest(tmp_path / "m")
    assert manifest["kind"] == "fpe_mlp" and manifest["record"] == {"rule": "random", "seed": 0}
    assert manifest["spec"] == {"in_features": 6, "hidden": [4, 3], "out_features": 2, "activation": "relu"}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "sparse_expansion.json"]


def test_spec_roundtrip_and_bad_spec_is_one_line(tmp_path):
    model = MaskedMLP(MLPConfig(3, (2,), 1, "identity"))
    assert MaskedMLP.from_spec(model.spec()).config == model.config
    save_artifact(tmp_path / "m", model)
    manifest = tmp_path / "m" / "sparse_expansion.json"
    data = json.loads(manifest.read_text())
    data["spec"]["hidden"] = [5]  # no longer matches the weights
    manifest.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="cannot load"):
        load_model(str(tmp_path / "m"))
