"""Windows are deterministic and honest; corpora split cleanly and fail clearly."""


import pytest
import torch

from sparse_expansion.data import calibration_windows, corpus_documents, evaluation_windows
from sparse_expansion.errors import UsageError


def test_calibration_windows_seeded():
    tokens = torch.arange(1000)
    a = calibration_windows(tokens, 8, 32, seed=3)
    assert torch.equal(a, calibration_windows(tokens, 8, 32, seed=3))
    assert not torch.equal(a, calibration_windows(tokens, 8, 32, seed=4))
    assert a.shape == (8, 32) and ((a[:, 1:] - a[:, :-1]) == 1).all()  # contiguous text


def test_evaluation_windows_non_overlapping_from_start():
    tokens = torch.arange(1000)
    full = evaluation_windows(tokens, 100)
    assert torch.equal(full.flatten(), tokens)  # every window, in order, covering the text
    few = evaluation_windows(tokens, 100, 4)
    starts = few[:, 0].tolist()
    assert starts[0] == 0 and starts == sorted(starts)
    assert all(b - a >= 100 for a, b in zip(starts, starts[1:]))


def test_window_errors():
    tokens = torch.arange(100)
    with pytest.raises(UsageError, match="fewer than 8 calibration windows"):
        calibration_windows(tokens, 8, 32)
    with pytest.raises(UsageError, match="non-overlapping windows"):
        evaluation_windows(tokens, 50, 3)


def test_corpus_errors(tmp_path):
    with pytest.raises(UsageError, match="neither a known name"):
        corpus_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UsageError, match="is empty"):
        corpus_documents(str(tmp_path / "empty.txt"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(UsageError, match="no .txt files"):
        corpus_documents(str(tmp_path / "dir"))


def test_shipped_corpora_split_is_disjoint():
    train, test = corpus_documents("shakespeare:train"), corpus_documents("shakespeare:test")
    assert set(test) == {"hamlet", "macbeth", "tempest", "twelfth_night"}
    assert not set(train) & set(test) and len(train) == 38
    assert len(corpus_documents("kjv")) == 66
