"""Tests for the on-the-fly Python standard-library code-search data (``recipes/stdlib_codesearch.py``, outside the package)."""

from __future__ import annotations

import ast
import json
import platform
import re
import sysconfig
import textwrap
from pathlib import Path

import pytest

from recipes import stdlib_codesearch as sc
from recipes.stdlib_codesearch import (
    build_stdlib_codesearch,
    collect_stdlib_pairs,
    is_test_split_module,
    normalize_query,
    stdlib_codesearch_info,
)

STDLIB = sysconfig.get_paths()["stdlib"]


@pytest.fixture(scope="module")
def built():
    """One default build (collection is cached in-process, so the other tests reuse it)."""
    return build_stdlib_codesearch()


@pytest.fixture(scope="module")
def info(built):
    return stdlib_codesearch_info()


def _rows(data):
    return list(zip(data.queries["query_id"], data.queries["query"], data.queries["positive_ids"]))


# ------------------------------------------------------------------------------------------- real stdlib


def test_two_builds_are_identical(built, info):
    sc._collect.cache_clear()  # force a second walk and parse of the standard library
    again = build_stdlib_codesearch()
    again_info = stdlib_codesearch_info()
    train, test = built
    assert _rows(again.train) == _rows(train)
    assert _rows(again.test) == _rows(test)
    assert again.train.corpus["doc_id"] == train.corpus["doc_id"]
    assert again.train.corpus["text"] == train.corpus["text"]
    assert again_info["fingerprint"] == info["fingerprint"]
    assert again.train.queries.info.description == train.queries.info.description


def test_size_is_a_few_thousand_and_capped(built, info):
    train, test = built
    total = train.num_queries + test.num_queries
    assert 1000 <= total <= 4000
    assert train.num_docs == total == info["num_docs"]
    assert (train.num_queries, test.num_queries) == (info["num_train"], info["num_test"])
    assert 0.1 <= test.num_queries / total <= 0.35
    assert len(info["train_modules"]) >= 100 and len(info["test_modules"]) >= 20

    uncapped = [p.doc_id for p in collect_stdlib_pairs()]
    assert len(uncapped) >= total
    small_train, small_test = build_stdlib_codesearch(max_pairs=1500)
    small_ids = small_train.corpus["doc_id"]
    assert len(small_ids) == small_train.num_queries + small_test.num_queries == 1500
    kept = set(small_ids)
    assert small_ids == [d for d in uncapped if d in kept]  # a subset, in walk order
    reseeded = build_stdlib_codesearch(max_pairs=1500, seed=1).train.corpus["doc_id"]
    assert len(reseeded) == 1500 and set(reseeded) != set(small_ids)


def test_split_is_by_module(built, info):
    train_mods, test_mods = set(info["train_modules"]), set(info["test_modules"])
    assert not train_mods & test_mods
    assert all(is_test_split_module(m) for m in test_mods)
    assert not any(is_test_split_module(m) for m in train_mods)
    module_of = {p.doc_id: p.module for p in collect_stdlib_pairs()}
    train, test = built
    assert {module_of[q[2][0]] for q in _rows(train)} == train_mods
    assert {module_of[q[2][0]] for q in _rows(test)} == test_mods


def test_shared_corpus_and_positive_ids(built):
    train, test = built
    assert train.corpus is test.corpus
    doc_ids = set(train.corpus["doc_id"])
    assert len(doc_ids) == train.num_docs
    positives = [pos for data in built for _, _, pos in _rows(data)]
    assert all(len(pos) == 1 and pos[0] in doc_ids for pos in positives)
    # every target is the positive of exactly one query, across both splits
    assert sorted(p[0] for p in positives) == sorted(doc_ids)
    for data in built:
        assert all(qid == f"q:{pos[0]}" for qid, _, pos in _rows(data))


def test_queries_are_real_sentences(built):
    for data in built:
        for _, query, _ in _rows(data):
            assert query.strip() == query and query
            assert len(query.split()) >= sc.MIN_QUERY_WORDS
            assert query[0].isalpha()
            assert "\n" not in query


def test_no_near_duplicate_queries(built):
    queries = [q for data in built for _, q, _ in _rows(data)]
    simple = [" ".join(re.sub(r"[^\w\s]", " ", q.lower()).split()) for q in queries]
    assert len(set(simple)) == len(simple)
    assert len({normalize_query(q) for q in queries}) == len(queries)
    texts = built.train.corpus["text"]
    assert len(set(texts)) == len(texts)


def test_test_code_is_skipped(built, info):
    modules = info["train_modules"] + info["test_modules"]
    for module in modules:
        parts = module.split(".")
        assert parts[0] != "test"
        assert not {"test", "tests", "idle_test", "__main__", "setup"} & set(parts), module
        assert not any(p.startswith("test_") for p in parts), module
    doc_ids = built.train.corpus["doc_id"]
    assert not any(d.startswith("test.") or ".idle_test." in d or "lib2to3.tests" in d for d in doc_ids)
    assert not any("site-packages" in d for d in doc_ids)


def test_docstrings_are_removed_from_targets(built):
    """Re-parse a sample of the source modules independently and check each target against its docstring."""
    pairs = {p.doc_id: p for p in collect_stdlib_pairs()}
    texts = dict(zip(built.train.corpus["doc_id"], built.train.corpus["text"]))
    modules = sorted({pairs[d].module for d in texts})
    checked = 0
    for module in modules[::5]:
        base = Path(STDLIB, *module.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        for doc_id, node in _functions(tree, module):
            if doc_id not in texts or pairs[doc_id].module != module:
                continue
            docstring = ast.get_docstring(node)
            first_line = docstring.strip().splitlines()[0].strip()
            target = texts[doc_id]
            assert first_line not in target, doc_id
            assert pairs[doc_id].query not in target, doc_id
            assert target.startswith(("def ", "async def ")), doc_id
            checked += 1
    assert checked >= 300


def test_methods_are_named_module_class_method(built):
    texts = dict(zip(built.train.corpus["doc_id"], built.train.corpus["text"]))
    pairs = {p.doc_id: p for p in collect_stdlib_pairs()}
    methods = [d for d, p in pairs.items() if d[len(p.module) + 1 :].count(".") >= 1 and d in texts]
    assert len(methods) >= 500
    decode = pairs.get("json.decoder.JSONDecoder.decode")
    assert decode is not None and decode.module == "json.decoder"
    assert decode.query.startswith("Return the Python representation of ``s``")
    assert decode.code.startswith("def decode(self, s")
    assert '"""' not in decode.code and "raw_decode" in decode.code


def test_targets_respect_max_code_chars():
    pairs = collect_stdlib_pairs(max_code_chars=300)
    assert len(pairs) >= 1000
    assert max(len(p.code) for p in pairs) <= 300
    assert sum(len(p.code) >= 250 for p in pairs) >= 100  # long functions are cut, not dropped


def test_python_version_recorded(built, info):
    version = platform.python_version()
    assert info["python_version"] == version
    assert info["name"] == f"python-stdlib-codesearch-{version}"
    assert built.train.name == f"python-stdlib-codesearch-{version}-train"
    assert built.test.name == f"python-stdlib-codesearch-{version}-test"
    assert re.fullmatch(r"[0-9a-f]{16}", info["fingerprint"])
    for ds, split in ((built.train.queries, "train"), (built.test.queries, "test"), (built.train.corpus, "corpus")):
        meta = json.loads(ds.info.description)
        assert meta["python_version"] == version and meta["fingerprint"] == info["fingerprint"]
        assert meta["split"] == split
    assert info["stats"]["files_parsed"] >= 500
    assert info["stats"]["functions_seen"] > info["stats"]["pairs"] >= info["num_docs"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="test_fraction"):
        build_stdlib_codesearch(test_fraction=0.0)
    with pytest.raises(ValueError, match="test_fraction"):
        build_stdlib_codesearch(test_fraction=1.0)
    with pytest.raises(ValueError, match="max_pairs"):
        build_stdlib_codesearch(max_pairs=1)


# ------------------------------------------------------------------------------------------- fake stdlib

GOOD = '''
def parse_header(line, strict=True):
    """Parse a header line into a key and a value.

    More text that is not part of the query.
    """
    key, _, value = line.partition(":")
    if strict and not value:
        raise ValueError(line)
    return key.strip(), value.strip()
'''


def _write(root: Path, rel: str, text: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")


@pytest.fixture()
def fake_stdlib(tmp_path: Path) -> Path:
    _write(
        tmp_path,
        "alpha.py",
        GOOD
        + '''
def short_doc(x):
    """Too short here."""
    y = x + 1
    return y

def does_nothing(self):
    """This body does nothing at all."""
    pass

def not_implemented(self):
    """Subclasses must implement this method."""
    raise NotImplementedError("subclass")

def _tiny_helper(a, b):
    """Add two numbers and double them."""
    c = a + b
    return 2 * c

def public_two(a, b):
    """Multiply two numbers and negate them."""
    c = a * b
    return -c

def grammar_rule(x):
    """dot-text = 1*atext *("." 1*atext)"""
    y = x
    return y

class Widget:
    """A widget."""

    def resize(self, width, height):
        """Resize the widget to the given size."""
        self.width = width
        self.height = height

        def inner():
            """An inner function is part of the target."""
            return width
        return inner

    class Part:
        def spin(self, turns):
            """Spin the part a number of turns."""
            for _ in range(turns):
                self.angle += 1

if True:
    def conditional(a):
        """Defined inside an if block at module level."""
        b = a * 3
        return b
''',
    )
    # near duplicates of alpha.parse_header: same code under another name, and the same query with other code
    _write(
        tmp_path,
        "beta.py",
        GOOD.replace("parse_header", "split_header").replace("Parse a header line into", "Split a header line into")
        + '''
def parse_other(text):
    """PARSE a header   line into a key and a value!"""
    head = text.split()
    return head[0], head[1:]

def unique_one(items):
    """Count the distinct items in a sequence."""
    seen = set(items)
    return len(seen)
''',
    )
    _write(
        tmp_path,
        "pkg/__init__.py",
        '''
def package_level(n):
    """Return the package level for a number."""
    level = n // 10
    return level
''',
    )
    skipped = '''
def skipped_function(n):
    """This function must never be collected."""
    m = n + 1
    return m
'''
    for rel in (
        "test/__init__.py",
        "test/test_alpha.py",
        "pkg/tests/helpers.py",
        "idlelib/idle_test/mock.py",
        "test_thing.py",
        "thing_test.py",
        "site-packages/extra.py",
        "__main__.py",
        "setup.py",
        "lib-dynload/whatever.py",
    ):
        _write(tmp_path, rel, skipped)
    _write(tmp_path, "broken_syntax.py", "def f(:\n    pass\n")
    _write(tmp_path, "broken_encoding.py", b"# -*- coding: utf-8 -*-\nx = '\xff\xfe'\n")
    return tmp_path


def test_fake_stdlib_filters(fake_stdlib: Path):
    pairs = collect_stdlib_pairs(stdlib_dir=fake_stdlib)
    assert [p.doc_id for p in pairs] == [
        "alpha.parse_header",
        "alpha.public_two",
        "alpha.Widget.resize",
        "alpha.Widget.Part.spin",
        "alpha.conditional",
        "beta.unique_one",
        "pkg.package_level",
    ]
    by_id = {p.doc_id: p for p in pairs}
    assert by_id["alpha.parse_header"].query == "Parse a header line into a key and a value."
    assert by_id["alpha.parse_header"].code == (
        "def parse_header(line, strict=True):\n"
        '    key, _, value = line.partition(":")\n'
        "    if strict and not value:\n"
        "        raise ValueError(line)\n"
        "    return key.strip(), value.strip()"
    )
    resize = by_id["alpha.Widget.resize"]
    assert resize.code.startswith("def resize(self, width, height):\n    self.width = width")
    assert "An inner function is part of the target." in resize.code
    assert "Resize the widget" not in resize.code
    assert all(p.module in {"alpha", "beta", "pkg"} for p in pairs)

    stats = stdlib_codesearch_info(stdlib_dir=fake_stdlib, test_fraction=0.5, max_pairs=None)["stats"]
    assert stats["files_found"] == 5  # alpha, beta, pkg, broken_syntax, broken_encoding
    assert stats["files_failed"] == 2
    assert stats["dropped_near_duplicate"] == 2
    assert stats["dropped_trivial_body"] == 3
    assert stats["dropped_short_or_odd_docstring"] == 2


def test_fake_stdlib_build_and_cap(fake_stdlib: Path):
    modules = ("alpha", "beta", "pkg")
    # a fraction that puts these three modules on both sides
    fraction = next(f / 10 for f in range(1, 10) if len({is_test_split_module(m, f / 10) for m in modules}) == 2)
    train, test = build_stdlib_codesearch(test_fraction=fraction, max_pairs=None, stdlib_dir=fake_stdlib)
    assert train.num_queries + test.num_queries == train.num_docs == 7
    capped = build_stdlib_codesearch(test_fraction=fraction, max_pairs=5, stdlib_dir=fake_stdlib, seed=3)
    assert capped.train.num_docs == 5
    again = build_stdlib_codesearch(test_fraction=fraction, max_pairs=5, stdlib_dir=fake_stdlib, seed=3)
    assert again.train.corpus["doc_id"] == capped.train.corpus["doc_id"]


def _functions(tree: ast.Module, module: str):
    """(doc_id, node) the way the builder names them; an independent re-implementation for the test."""

    def walk(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}.{node.name}", node
            elif isinstance(node, ast.ClassDef):
                yield from walk(node.body, f"{prefix}.{node.name}")
            elif isinstance(node, ast.If):
                yield from walk(node.body, prefix)
                yield from walk(node.orelse, prefix)
            elif isinstance(node, ast.Try):
                yield from walk(node.body, prefix)
                for handler in node.handlers:
                    yield from walk(handler.body, prefix)
                yield from walk(node.orelse, prefix)
                yield from walk(node.finalbody, prefix)
            elif isinstance(node, ast.With):
                yield from walk(node.body, prefix)

    seen = set()
    for doc_id, node in walk(tree.body, module):
        if doc_id not in seen:
            seen.add(doc_id)
            yield doc_id, node
