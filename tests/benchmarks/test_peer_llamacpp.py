"""The llama.cpp peer study (benchmarks/peer_llamacpp/) without llama.cpp: its variant configs parse,
bad ones are refused in one line, and every committed results folder's report.md redraws, identically,
from its results.jsonl alone. Running llama.cpp needs the peer venv that setup.sh builds; CI has none."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_benchmark

STUDY = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_llamacpp"
SCRIPT = STUDY / "peer.py"
RESULTS = sorted(p.parent for p in (STUDY / "results").glob("*/results.jsonl"))


def load_peer():
    return load_benchmark("benchmarks/peer_llamacpp/peer.py", "peer_llamacpp")


def test_shipped_configs_parse_and_expand_the_work_folder(tmp_path):
    peer = load_peer()
    smollm = peer.load_config(STUDY / "configs" / "smollm2.toml", tmp_path)
    names = [v.name for v in smollm.variants]
    assert smollm.base == "llama.cpp Q4_1 (shipped)" and smollm.base in names
    assert {v.engine for v in smollm.variants} == {"ours", "llama.cpp"}
    sg70 = next(v for v in smollm.variants if v.name == "SparseGPT 70% bf16")
    assert sg70.folder == str(tmp_path / "sg70") and sg70.make[:3] == ["prune", "smollm2-135m", "--method"]
    q8 = next(v for v in smollm.variants if v.name == "llama.cpp Q8_0")
    assert q8.quantize == [str(tmp_path / "smollm2-135m.F16.gguf"), "Q8_0"]
    big = peer.load_config(STUDY / "configs" / "llama1b.toml", tmp_path)
    assert big.tokenizer == str(tmp_path / "llama1b") and not any(v.perplexity for v in big.variants)
    for config in sorted((STUDY / "configs").glob("*.toml")):  # every committed config, base among its rows
        loaded = peer.load_config(config, tmp_path)
        assert loaded.base in [v.name for v in loaded.variants], config.name
    defaults = peer.load_config(STUDY / "configs" / "defaults.toml", tmp_path)
    assert {v.weights for v in defaults.variants if "no flags" in v.name} == {"fast"}  # generate's own default


def test_interleaving_alternates_the_engines():
    peer = load_peer()
    variants = [peer.Variant(name=n, engine=e) for n, e in
                (("q4", "llama.cpp"), ("f16", "llama.cpp"), ("d32", "ours"), ("d16", "ours"), ("sg", "ours"))]
    assert [v.name for v in peer.interleaved(variants)] == ["q4", "d32", "f16", "d16", "sg"]


@pytest.mark.parametrize("body, words", [
    ('[[variant]]\nname = "a"\nengine = "ours"\nfolder = "x"\ndtype = "bf16"\nweights = "auto"\n', "dtype"),
    ('[[variant]]\nname = "a"\nengine = "vllm"\n', "engine"),
    ('[[variant]]\nname = "a"\nengine = "llama.cpp"\ngguf = "a.gguf"\nthreads = 4\n', "unknown keys"),
    ('[[variant]]\nname = "a"\nengine = "llama.cpp"\ngguf = "a.gguf"\n' * 2, "unique name"),
    ('base = "b"\n[[variant]]\nname = "a"\nengine = "llama.cpp"\ngguf = "a.gguf"\n', "base 'b'"),
    ("", "no [[variant]]"),
])
def test_bad_config_is_refused_in_one_line(tmp_path, body, words):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    done = subprocess.run([sys.executable, str(SCRIPT), "check", "--config", str(config)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not RESULTS, reason="no committed results folder")
@pytest.mark.parametrize("folder", RESULTS, ids=[p.name for p in RESULTS])
def test_committed_report_redraws_from_its_jsonl(tmp_path, folder):
    pytest.importorskip("matplotlib")
    copy = tmp_path / folder.name
    copy.mkdir()
    shutil.copy(folder / "results.jsonl", copy / "results.jsonl")
    subprocess.run([sys.executable, str(SCRIPT), "report", str(copy)], check=True, capture_output=True)
    assert (copy / "report.md").read_text() == (folder / "report.md").read_text()
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    if any(r["kind"] == "perplexity" for r in rows):
        assert (copy / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every median in the report is one of the rows' values or the median of them: spot-check one
    speed = [r for r in rows if r["kind"] == "speed"]
    first = speed[0]
    same = sorted(r["decode_tokens_per_second"] for r in speed
                  if (r["variant"], r["threads"]) == (first["variant"], first["threads"]))
    median = (same[(len(same) - 1) // 2] + same[len(same) // 2]) / 2
    assert f"| {first['variant']} | {first['engine']} | {median:,.1f} |" in (copy / "report.md").read_text()
