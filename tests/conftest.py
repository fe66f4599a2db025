"""Fixtures over helpers.py's tiny random models and tokenizer: no download, fast."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
from helpers import SAMPLE_TEXT, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture
def single_thread():
    from sparse_expansion.threads import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(SAMPLE_TEXT)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A saved tiny llama folder (config, safetensors, tokenizer) as a user would point at."""
    model = tiny_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
