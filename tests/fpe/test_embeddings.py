import torch

from sparse_expansion.fpe import embeddings as emb
from sparse_expansion.fpe import studies


def test_spoken_line_filter():
    assert emb._is_spoken("My father's spirit in arms! All is not well;")
    assert not emb._is_spoken("[Enter Laertes and Ophelia.]")
    assert not emb._is_spoken("Laer.")
    assert not emb._is_spoken("ACT I. SCENE II. A room of state in the castle.")
    assert not emb._is_spoken("Scene III. A room in Polonius's house.")


def test_text_selection_is_balanced_and_fixed():
    texts, labels, classes = emb.play_lines()
    assert len(classes) == 8 and len(texts) == 8 * emb.PER_CLASS
    assert torch.bincount(torch.tensor(labels)).tolist() == [emb.PER_CLASS] * 8
    assert emb.play_lines()[0] == texts  # same lines every time
    texts, labels, classes = emb.bible_verses()
    assert classes == list(emb.BOOKS) and len(set(texts)) > 0.99 * len(texts)


def test_embeddings_cached_once(tmp_path, monkeypatch):
    calls = []

    def fake_embed(texts, batch_size=64, progress=True):
        calls.append(len(texts))
        return torch.randn(len(texts), 4, generator=torch.Generator().manual_seed(0))

    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", str(tmp_path))
    monkeypatch.setattr(emb, "embed", fake_embed)
    x1, y1, c1 = emb._cached_embeddings("toy", ["a b", "c d", "e f"], [0, 1, 1], ["p", "q"])
    x2, y2, c2 = emb._cached_embeddings("toy", ["a b", "c d", "e f"], [0, 1, 1], ["p", "q"])
    assert calls == [3]  # computed once, then read back
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and c1 == c2 == ["p", "q"]
    files = sorted(p.name for p in (tmp_path / "fpe").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")


def test_split_is_stratified_and_standardised():
    x = torch.randn(200, 5) * 3 + 7
    y = torch.arange(200) % 4
    x_tr, y_tr, x_te, y_te = emb.train_test_split(x, y, 0.25, seed=0)
    assert len(y_te) == 48 and torch.bincount(y_te).tolist() == [12] * 4  # round(12.5) per class
    assert torch.allclose(x_tr.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(x_tr.std(0), torch.ones(5), atol=1e-4)


def test_task_table_matches_the_data():
    assert studies.REAL_TASKS == ("plays", "bible", "digits")
    x, y, classes = emb.load_task("digits")
    assert x.shape == (1797, studies.TASKS["digits"].inputs) and len(classes) == 10
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0
