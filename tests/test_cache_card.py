"""The cache's dataset card lives in hf_corrector/cache/card.py (issue 22: the cache package imports nothing from hub/,
and nothing is registered at import time), and ``cache.push_to_hub(repo_id)`` publishes it in one commit."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import torch

from hf_corrector import StaleCache
from hf_corrector.cache import stale_cache
from hf_corrector.hub import push_cache_to_hub, render_cache_card
from hf_corrector.cache.card import render_cache_card as moved
from tests.conftest_hub import fake_hub  # noqa: F401
from tests.hub_env import run_with_hub


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            names += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def test_cache_package_imports_nothing_from_hub() -> None:
    """Every module of hf_corrector/cache/ (its card included): no import of hf_corrector.hub, eager or lazy."""
    modules = sorted(Path(stale_cache.__file__).parent.glob("*.py"))
    assert len(modules) >= 10
    for module in modules:
        imported = _imported_modules(module)
        assert not [m for m in imported if "hub" in m.split(".") and m != "huggingface_hub"], (module.name, imported)


def test_the_card_needs_no_registration() -> None:
    """``cache.push_to_hub`` renders the cache's own card (hf_corrector/cache/card.py): nothing is registered at
    import time, and the hub package re-exports the same function."""
    assert render_cache_card is moved and push_cache_to_hub.__module__ == "hf_corrector.cache.card"
    assert not hasattr(stale_cache, "_card_renderer") and not hasattr(stale_cache, "register_card_renderer")
    cache = StaleCache([f"d{i}" for i in range(3)], torch.zeros(3, 4), provenance={"encoder": "tiny-bert"})
    text = moved(cache, "me/cache", keep_existing_metadata=False)
    assert "stale-cache" in text and "| Rows | 3 |" in text and 'StaleCache.load("me/cache")' in text


def test_push_to_hub_publishes_the_card_and_the_provenance(fake_hub, tmp_path: Path) -> None:  # noqa: F811
    code = """
        import json
        from pathlib import Path
        import torch
        from hf_corrector import StaleCache
        from hf_corrector.hub import push_cache_to_hub
        from tests.tiny import tiny_data, tiny_retriever

        train, _ = tiny_data(num_docs=12)
        retriever = tiny_retriever(Path("."))
        cache = StaleCache.build(train.corpus, retriever, batch_size=4, show_progress_bar=False)
        cache.push_to_hub("tester/cache-a")
        push_cache_to_hub(cache, "tester/cache-b")
        cache.push_to_hub("tester/cache-c", card="# hand-written card\\n")
        back = StaleCache.load("tester/cache-a")
        assert torch.equal(back.matrix(), cache.matrix()) and back.doc_ids == cache.doc_ids
        assert back.provenance == cache.provenance and back.source == "tester/cache-a"
        back.check_provenance(retriever, doc_ids=list(train.corpus["doc_id"]), texts=list(train.corpus["text"]))
        Path("prov.json").write_text(json.dumps(cache.provenance))
        print("OK")
    """
    proc = run_with_hub(code, fake_hub.url, tmp_path, timeout=240)
    assert proc.stdout.strip().endswith("OK")
    prov = json.loads((tmp_path / "prov.json").read_text())
    for repo in ("tester/cache-a", "tester/cache-b"):
        files = fake_hub.files(repo, repo_type="dataset")
        card = files["README.md"].decode()
        assert f'StaleCache.load("{repo}")' in card and "tiny-bert" in card and "configs:" in card
        info = json.loads(files["cache_info.json"])
        assert info["provenance"]["weights_fingerprint"] == prov["weights_fingerprint"].strip()
    assert fake_hub.files("tester/cache-c", repo_type="dataset")["README.md"] == b"# hand-written card\n"
    for repo in ("tester/cache-a", "tester/cache-b", "tester/cache-c"):  # rows, provenance and card: one commit
        commits = fake_hub.repos[("dataset", repo)].commits.values()
        assert sorted(c.title for c in commits) == ["Upload stale cache", "initial commit"], repo
