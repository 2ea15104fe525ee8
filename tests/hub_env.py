"""Run client-side Hugging Face code in a subprocess pointed at a local FakeHub.

``huggingface_hub``, ``transformers`` and ``datasets`` read ``HF_ENDPOINT`` / ``HF_HOME`` /
``HF_HUB_DISABLE_XET`` when they are imported, so the environment has to be set before the
interpreter that imports them starts: hence a fresh subprocess per snippet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_fake_token_for_tests"

# Variables that would redirect caches or force offline mode in the child.
_DROP = (
    "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN",
    "HF_XET_CACHE", "HUGGINGFACE_CO_STAGING",
)


def hub_environ(hub_url: str, hf_home: str | os.PathLike) -> dict[str, str]:
    """The environment a child process needs to talk to ``hub_url`` only."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env.update(
        HF_ENDPOINT=hub_url.rstrip("/"),
        HF_TOKEN=FAKE_TOKEN,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="0",
        TOKENIZERS_PARALLELISM="false",
        NO_PROXY=",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"])),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    env["no_proxy"] = env["NO_PROXY"]
    return env


def run_with_hub(code: str, hub_url: str, tmp_path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` with ``python -c`` (cwd=tmp_path) against the hub at ``hub_url``.

    ``HF_HOME`` is ``tmp_path/hf_home``. Raises ``AssertionError`` carrying stdout/stderr when the
    snippet exits non-zero or times out.
    """
    tmp_path = Path(tmp_path)
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    try:
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=hub_environ(hub_url, hf_home), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"hub snippet timed out after {timeout}s\n--- stdout ---\n{err.stdout}\n--- stderr ---\n{err.stderr}"
        ) from err
    if proc.returncode != 0:
        raise AssertionError(
            f"hub snippet failed (exit {proc.returncode})\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc
