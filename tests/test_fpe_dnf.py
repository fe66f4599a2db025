import pytest
import torch

from sparse_expansion.fpe import dnf
from sparse_expansion.fpe.mlp import MaskedMLP, MLPConfig, load_mlp, save_mlp


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


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = MaskedMLP(MLPConfig(6, (4, 3), 2))
    with torch.no_grad():
        model.layers[0].set_mask((torch.rand(4, 6) > 0.5).float())
    save_mlp(model, tmp_path / "m")
    again = load_mlp(tmp_path / "m")
    x = torch.randn(5, 6)
    assert torch.equal(model(x), again(x))
    assert not list(tmp_path.glob("m/*.pt")) and (tmp_path / "m" / "model.safetensors").is_file()
