"""The package's layering only points down (issue 22): a walk over every import of ``hf_corrector/`` (at module
level, lazy inside functions, and under ``TYPE_CHECKING``: a reader follows those too) checks that no module imports
a higher layer, and that no module grows past the size a reader can hold.

Layers, bottom to top (a module may import its own layer and the ones below)::

    _version, errors, utils, atomic_io   no internal imports
    models                       retriever, corrector, reader; their save / load files
    cache                        the stale cache, its store and manager
    negatives                    samplers, transforms, the miner (read the cache through a narrow protocol)
    data                         loaders into RetrievalData
    evaluation                   metrics and the evaluator
    hub                          card data and rendering, pushes of models and caches (never a trainer)
    serving                      the corrected index
    training                     the trainer, its callbacks, its cards and pushes
    testbed, plots               tools on top of training
    hf_corrector (the root)      re-exports
"""

from __future__ import annotations

import ast
from pathlib import Path

import hf_corrector

PACKAGE = Path(hf_corrector.__file__).parent

LAYERS = [
    {"_version", "errors", "utils", "atomic_io"},
    {"models"},
    {"cache"},
    {"negatives"},
    {"data"},
    {"evaluation"},
    {"hub"},
    {"serving"},
    {"training"},
    {"testbed", "plots"},
    {""},  # the package root
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

# No upward edge is allowed; an entry here would need a reason beside it.
KNOWN_UPWARD: set[tuple[str, str]] = {
    # RetrieverModel.push_to_hub is transformers' habit on the model itself, and the card it publishes (the
    # sentence-transformers card rendered from CardData) is hub work: one lazy import inside that method.
    ("hf_corrector.models.retriever", "hf_corrector.hub.retriever_push"),
}

MAX_LINES = 450
KNOWN_LONG: set[str] = set()  # every module is split by job; a new exception needs a reason here


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    return ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path, package_dir: Path = PACKAGE) -> list[tuple[str, int]]:
    """Every ``hf_corrector`` module ``path`` imports, with its line: eager, lazy and ``TYPE_CHECKING`` alike."""
    name = _module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out.extend((t, node.lineno) for t in targets if t == "hf_corrector" or t.startswith("hf_corrector."))
    return out


def layer_of(module: str) -> str:
    """``hf_corrector.cache.manager`` -> ``cache``; ``hf_corrector.errors`` -> ``errors``; the root -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(package_dir: Path = PACKAGE) -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        source = _module_name(path, package_dir)
        for target, line in imports_of(path, package_dir):
            if RANK[layer_of(target)] > RANK[layer_of(source)]:
                found.append((source, target, line))
    return found


def test_every_subpackage_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert names - set(RANK) == set(), "add the new module or subpackage to LAYERS in tests/test_layering.py"


def test_no_import_points_up():
    found = [(s, t, line) for s, t, line in upward_imports() if (s, t) not in KNOWN_UPWARD]
    assert not found, "imports from a lower layer to a higher one:\n" + "\n".join(
        f"  {s} (line {line}) -> {t}" for s, t, line in found)


def test_the_known_exceptions_still_exist():
    """An exception that no longer occurs must leave KNOWN_UPWARD (so it cannot come back unnoticed)."""
    assert KNOWN_UPWARD <= {(s, t) for s, t, _ in upward_imports()}


def test_the_walk_sees_lazy_and_type_checking_imports(tmp_path):
    """The checker itself: a lazy import in a function and a TYPE_CHECKING import are edges; a downward one is not
    reported."""
    models = tmp_path / "hf_corrector" / "models"
    models.mkdir(parents=True)
    (models / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nfrom ..errors import ConfigError\nif TYPE_CHECKING:\n"
        "    from ..training.trainer import X\ndef f():\n    from ..hub import cards\n", encoding="utf-8")
    edges = {(s, t) for s, t, _ in upward_imports(tmp_path / "hf_corrector")}
    assert edges == {("hf_corrector.models.probe", "hf_corrector.training.trainer"),
                     ("hf_corrector.models.probe", "hf_corrector.hub")}


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert set(long) - KNOWN_LONG == set(), f"split these modules by job (at most {MAX_LINES} lines): {long}"
