"""The peer benchmark script (benchmarks/peer_llmcompressor/peer_llmcompressor.py) without llm-compressor: its
from recorded results. Running llm-compressor itself needs its own venv, which CI does not have."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_llmcompressor" / "peer_llmcompressor.py"


def test_peer_table_from_results(tmp_path):
    rows = [{"side": side, "config": "sparsegpt-0.5", "perplexity": ppl, "wall_s": wall, "peak_gib": 1.2,
             "compress_s": wall - 60, "mlp_sparsity": sparsity, "load": [2.0, 2.0, 2.0]}
            for side, ppl, wall, sparsity in (("ours", 51.7, 515.0, 0.5), ("theirs", 52.2, 597.0, 0.500008))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, str(SCRIPT), "table", "--out", str(tmp_path)], capture_output=True,
                          text=True, check=True)
    line = [row for row in done.stdout.splitlines() if row.startswith("| sparsegpt-0.5")][0]
    assert "51.70 | 52.20 | +1.0%" in line and "8:35 / 9:57" in line and "0.500000 / 0.500008" in line


def test_peer_run_needs_prepared_tokens(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--out", str(tmp_path), "--side", "ours"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "prepare" in done.stderr
