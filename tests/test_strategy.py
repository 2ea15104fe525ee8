"""The strategy is decoded in one place: no module outside the strategy object reads the strategy arguments, and
samplers see the cache only through the narrow reader (AST checks over the sources)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hf_corrector
from hf_corrector.negatives.context import CacheReader
from hf_corrector.training.strategy import STRATEGY_ARGUMENTS, NegativeStrategy

PACKAGE = Path(hf_corrector.__file__).parent
ROOT = PACKAGE.parent
#: the modules that must ask the strategy object instead of reading arguments
ASKERS = [PACKAGE / "training" / "trainer.py", *sorted((PACKAGE / "hub").glob("*.py")), ROOT / "recipes" / "train.py"]


def _strategy_reads(path: Path) -> list[str]:
    """``x.<name>`` / ``getattr(x, "<name>")`` of a strategy argument, except on a strategy object
    (``strategy.<name>``, ``self.strategy.<name>``, ``trainer.strategy.<name>``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in STRATEGY_ARGUMENTS:
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name != "strategy":
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in STRATEGY_ARGUMENTS):
            found.append(f"{path.name}:{node.lineno} getattr {node.args[1].value!r}")
    return found


@pytest.mark.parametrize("path", ASKERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_trainer_cards_and_recipe_read_no_strategy_argument(path):
    assert _strategy_reads(path) == [], "ask trainer.strategy (hf_corrector.training.strategy) instead"


def test_the_check_catches_a_strategy_read(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(args, s):\n    return args.correction, getattr(args, 'tele_negatives'), s.strategy.correction\n")
    assert _strategy_reads(bad) == ["bad.py:2 .correction", "bad.py:2 getattr 'tele_negatives'"]


def test_every_strategy_argument_is_an_argument():
    fields = set(hf_corrector.CorrectorTrainingArguments.__dataclass_fields__)
    assert set(STRATEGY_ARGUMENTS) - fields == {"uses_corrector", "mines_negatives"}  # the two derived properties


def test_describe_strategy_and_citations_for_are_gone():
    import hf_corrector.hub as hub
    import hf_corrector.hub.cards as cards

    for name in ("describe_strategy", "citations_for"):
        assert not hasattr(hub, name) and not hasattr(cards, name)


def test_samplers_reach_no_cache_internals():
    """Samplers and transforms read the cache through the CacheReader protocol only: no ``.cache.cache``, no
    attribute probing of the reader."""
    members = {n for n in [*dir(CacheReader), *CacheReader.__annotations__] if not n.startswith("_")} | {"__len__"}
    for path in sorted((PACKAGE / "negatives").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "cache":
                assert node.attr in members, f"{path.name}:{node.lineno} reads .cache.{node.attr}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and node.args:
                target = node.args[0]
                assert not (isinstance(target, ast.Attribute) and target.attr == "cache"), \
                    f"{path.name}:{node.lineno} probes the cache with getattr"
    assert {"rows", "read_chunk", "local", "local_matrix", "sharded", "collectives", "dim"} <= members


def test_the_manager_reader_is_narrow():
    import torch

    from hf_corrector.cache import StaleCache
    from hf_corrector.cache.manager import CacheManager

    cache = StaleCache([f"d{i}" for i in range(6)], torch.arange(12.0).reshape(6, 2))
    reader = CacheManager(cache, [f"t{i}" for i in range(6)], encode_targets=None, sharding="sharded").reader()
    assert isinstance(reader, CacheReader) and not hasattr(reader, "cache") and not hasattr(reader, "texts")
    assert (len(reader), reader.dim, reader.sharded, reader.local_rows) == (6, 2, False, (0, 6))  # one process
    assert reader.local(torch.tensor([4])).tolist() == [[8.0, 9.0]] and reader.local_matrix().shape == (6, 2)
    assert NegativeStrategy().sampler_name == "exhaustive"
