"""A small code-search retrieval set built on the fly from the running Python's standard library.

The pairs are made the way CodeSearchNet makes them: the *query* is the first sentence of a function's
docstring, the *target* is that function's source code with the docstring removed. Methods are included and
named ``module.Class.method``. Nothing is downloaded: the data comes from the ``.py`` files under
``sysconfig.get_paths()["stdlib"]``, so it is exactly reproducible for a given Python version.

What is left out:

* test code (packages or modules named ``test``, ``tests``, ``idle_test``, ``test_*``, ``*_test``),
  ``__main__``/``setup``/``conftest`` files, ``site-packages`` and anything that is not an importable name;
* files that cannot be decoded or parsed (counted and logged);
* functions nested in other functions, functions whose body is trivial (``pass``, ``...``,
  ``raise NotImplementedError``, fewer than 2 statements; fewer than 3 for names starting with ``_``);
* docstrings whose first sentence has fewer than 4 words, starts with something other than a letter, is
  mostly not plain words (grammar rules such as ``dot-text = 1*atext``), or reads like a signature
  (``D.get(k[,d]) -> D[k]``);
* near duplicates: a pair is dropped when its normalised query (case, punctuation, whitespace and
  identifiers folded) or its normalised code (comments, whitespace and the function's own name folded)
  was already seen earlier in the sorted walk.

The train/test split is by module (``sha1(module name)``), so a module's functions are all in one split. Both
splits share one corpus holding every target of both splits: test queries are answered against the whole
corpus. ``max_pairs`` caps the total number of pairs with a stable, seeded hash ordering.
:func:`build_stdlib_open_qa` turns it into an offline open-QA task for reader-supervised training.

Demo data for the recipe, the benchmarks and the tests, kept outside the library package (issue 22): import it as
``recipes.stdlib_codesearch`` from the repository root (``recipes/train.py`` puts the root on ``sys.path``).

Example:
    >>> from recipes.stdlib_codesearch import build_stdlib_codesearch, stdlib_codesearch_info
    >>> train, test = build_stdlib_codesearch(max_pairs=4000)  # doctest: +SKIP
    >>> train.corpus is test.corpus, train.num_queries, test.num_queries, train.num_docs  # doctest: +SKIP
    (True, 3079, 657, 3736)
    >>> docs = train.doc_index()  # doctest: +SKIP
    >>> print(train.corpus[docs["json.decoder.JSONDecoder.decode"]]["text"])  # doctest: +SKIP
    def decode(self, s, _w=WHITESPACE.match):
        obj, end = self.raw_decode(s, idx=_w(s, 0).end())
        end = _w(s, end).end()
        if end != len(s):
            raise JSONDecodeError("Extra data", s, end)
        return obj
    >>> stdlib_codesearch_info()["python_version"]  # doctest: +SKIP
    '3.11.7'

The numbers above are for CPython 3.11.7; other versions give other (equally deterministic) sets.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import platform
import re
import sysconfig
import tokenize
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import datasets

from hf_corrector.data.format import CORPUS_FEATURES, QUERY_FEATURES, RetrievalData
from hf_corrector.data.open_qa import OPEN_QA_FEATURES, OpenQAData

logger = logging.getLogger(__name__)

DATASET_NAME = "python-stdlib-codesearch"
MIN_QUERY_WORDS = 4
MAX_QUERY_CHARS = 300
MIN_WORDY_FRACTION = 0.6  # share of a query's tokens that must be plain words (drops grammar rules, syntax lines)
MIN_STATEMENTS = 2
MIN_PRIVATE_STATEMENTS = 3
SKIP_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
SKIP_MODULE_NAMES = frozenset({"__main__", "setup", "conftest"})

_FUNC_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef)
_CONTAINER_TYPES = (ast.If, ast.Try, ast.With)  # definitions made conditionally at module or class level
_SIGNATURE_RE = re.compile(r"^[\w.\[\]]*\([^)]*\)\s*(->|-->|=)")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_BACKTICK_RE = re.compile(r"`+[^`]*`+")
_IDENTIFIER_RE = re.compile(r"\b\w+(?:[._]\w+)+\b|\b\w+\(\)")
_NON_ALNUM_RE = re.compile(r"[^0-9a-z]+")
_WORD_RE = re.compile(r"^[\"'`(\[]*[A-Za-z]+[\"'`)\],.;:!?]*$")
_LINE_SPLIT_RE = re.compile(r"\r\n|\r|\n")
_LINE_SPLIT_KEEP_RE = re.compile(r"(\r\n|\r|\n)")


@dataclasses.dataclass(frozen=True)
class CodeSearchPair:
    """One (docstring sentence, code) pair from the standard library."""

    doc_id: str
    module: str
    query: str
    code: str


class StdlibCodeSearch(NamedTuple):
    """The two splits; unpacks as ``train, test``. Both share one ``corpus`` Dataset object."""

    train: RetrievalData
    test: RetrievalData


# --------------------------------------------------------------------------------------------- public API


def build_stdlib_codesearch(
    test_fraction: float = 0.2,
    max_pairs: int | None = 4000,
    max_code_chars: int = 2000,
    *,
    seed: int = 0,
    stdlib_dir: str | os.PathLike[str] | None = None,
) -> StdlibCodeSearch:
    """Build ``(train, test)`` :class:`RetrievalData` from the standard library, split by module.

    ``max_pairs`` caps train + test together (``None``: no cap); which pairs survive the cap depends only on
    ``seed`` and the doc ids. Targets longer than ``max_code_chars`` are cut at a line boundary.
    """
    selected, test_modules, info = _select(test_fraction, max_pairs, max_code_chars, seed, stdlib_dir)
    corpus_rows = [{"doc_id": p.doc_id, "text": p.code} for p in selected]
    train_q = [_query_row(p) for p in selected if p.module not in test_modules]
    test_q = [_query_row(p) for p in selected if p.module in test_modules]
    base = f"{DATASET_NAME}-{info['python_version']}"
    train = RetrievalData.from_records(queries=train_q, corpus=corpus_rows, name=f"{base}-train")
    test_queries = datasets.Dataset.from_list(test_q, features=QUERY_FEATURES)
    test = RetrievalData(queries=test_queries, corpus=train.corpus, name=f"{base}-test")
    test.validate()
    shared = {k: info[k] for k in ("python_version", "fingerprint", "test_fraction", "max_pairs", "max_code_chars")}
    train.corpus.info.description = json.dumps({**shared, "split": "corpus", "num_docs": len(corpus_rows)})
    for split, data in (("train", train), ("test", test)):
        data.queries.info.description = json.dumps({**shared, "split": split, "num_queries": data.num_queries})
    logger.info(
        "%s: %d train queries (%d modules), %d test queries (%d modules), %d docs, fingerprint %s",
        base,
        train.num_queries,
        len(info["train_modules"]),
        test.num_queries,
        len(info["test_modules"]),
        train.num_docs,
        info["fingerprint"],
    )
    return StdlibCodeSearch(train=train, test=test)


def stdlib_codesearch_info(
    test_fraction: float = 0.2,
    max_pairs: int | None = 4000,
    max_code_chars: int = 2000,
    *,
    seed: int = 0,
    stdlib_dir: str | os.PathLike[str] | None = None,
) -> dict:
    """Describe what :func:`build_stdlib_codesearch` returns for the same arguments (without building Datasets).

    Keys: ``python_version``, ``name``, ``fingerprint``, ``stdlib_dir``, ``num_train``, ``num_test``,
    ``num_docs``, ``train_modules``, ``test_modules`` (sorted lists), the arguments, and ``stats`` (counts of
    files and functions seen and of the reasons things were dropped).
    """
    return _select(test_fraction, max_pairs, max_code_chars, seed, stdlib_dir)[2]


def collect_stdlib_pairs(
    max_code_chars: int = 2000, stdlib_dir: str | os.PathLike[str] | None = None
) -> list[CodeSearchPair]:
    """All filtered, de-duplicated pairs in walk order (sorted modules, source order), before cap and split."""
    return _truncated(_collect(_stdlib_root(stdlib_dir))[0], max_code_chars)


def is_test_split_module(module: str, test_fraction: float = 0.2) -> bool:
    """Whether ``module`` goes to the test split: ``sha1(module) mod 10000 < test_fraction * 10000``."""
    return _bucket(module, "split") < round(test_fraction * 10_000)


def normalize_query(text: str) -> str:
    """Fold a query for near-duplicate detection: identifiers, case, punctuation and whitespace."""
    text = _BACKTICK_RE.sub(" id ", text)
    text = _IDENTIFIER_RE.sub(" id ", text)
    return _NON_ALNUM_RE.sub(" ", text.lower()).strip()


def normalize_code(code: str, name: str | None = None) -> str:
    """Fold code for near-duplicate detection: comments and layout dropped, the function's own name replaced."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return " ".join(code.split())
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    out = []
    for tok in tokens:
        if tok.type in skip:
            continue
        out.append("_F_" if name is not None and tok.type == tokenize.NAME and tok.string == name else tok.string)
    return " ".join(out)


# ------------------------------------------------------------------------------------------ selection/split


def _query_row(pair: CodeSearchPair) -> dict:
    return {"query_id": f"q:{pair.doc_id}", "query": pair.query, "positive_ids": [pair.doc_id], "negative_ids": []}


def _bucket(key: str, salt: str) -> int:
    return int(hashlib.sha1(f"{salt}:{key}".encode()).hexdigest()[:12], 16) % 10_000


def _select(
    test_fraction: float,
    max_pairs: int | None,
    max_code_chars: int,
    seed: int,
    stdlib_dir: str | os.PathLike[str] | None,
) -> tuple[list[CodeSearchPair], set[str], dict]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    if max_pairs is not None and max_pairs < 2:
        raise ValueError(f"max_pairs must be at least 2 (or None), got {max_pairs}")
    if max_code_chars < 80:
        raise ValueError(f"max_code_chars must be at least 80, got {max_code_chars}")
    root = _stdlib_root(stdlib_dir)
    pairs, stats = _collect(root)
    selected = _truncated(pairs, max_code_chars)
    if max_pairs is not None and len(selected) > max_pairs:
        rank = [hashlib.sha1(f"{seed}:{p.doc_id}".encode()).digest() for p in selected]
        order = sorted(range(len(selected)), key=rank.__getitem__)
        keep = sorted(order[:max_pairs])  # back to walk order
        selected = [selected[i] for i in keep]
    modules = sorted({p.module for p in selected})
    test_modules = {m for m in modules if is_test_split_module(m, test_fraction)}
    num_test = sum(p.module in test_modules for p in selected)
    if num_test == 0 or num_test == len(selected):
        raise ValueError(
            f"split by module left one side empty ({len(selected)} pairs from {len(modules)} modules, "
            f"test_fraction={test_fraction}); use more pairs or another test_fraction"
        )
    fingerprint = hashlib.sha256()
    for p in selected:
        split = "test" if p.module in test_modules else "train"
        fingerprint.update(json.dumps([split, p.doc_id, p.query, p.code]).encode())
    info = {
        "python_version": platform.python_version(),
        "name": f"{DATASET_NAME}-{platform.python_version()}",
        "fingerprint": fingerprint.hexdigest()[:16],
        "stdlib_dir": root,
        "test_fraction": test_fraction,
        "max_pairs": max_pairs,
        "max_code_chars": max_code_chars,
        "seed": seed,
        "num_train": len(selected) - num_test,
        "num_test": num_test,
        "num_docs": len(selected),
        "train_modules": [m for m in modules if m not in test_modules],
        "test_modules": [m for m in modules if m in test_modules],
        "stats": {**dict(stats), "pairs_before_cap": len(pairs)},
    }
    return selected, test_modules, info


def _stdlib_root(stdlib_dir: str | os.PathLike[str] | None) -> str:
    return os.path.abspath(os.fspath(stdlib_dir) if stdlib_dir is not None else sysconfig.get_paths()["stdlib"])


# ----------------------------------------------------------------------------------------------- collection


def _iter_module_files(root: str) -> list[tuple[str, str]]:
    """``(module name, path)`` for every non-test ``.py`` file under ``root``, sorted by module name."""
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if _keep_part(d))
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == os.curdir else rel.split(os.sep)
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            stem = fname[:-3]
            if stem in SKIP_MODULE_NAMES or not _keep_part(stem):
                continue
            mod_parts = parts if stem == "__init__" else [*parts, stem]
            if not mod_parts:
                continue
            found.append((".".join(mod_parts), os.path.join(dirpath, fname)))
    found.sort()
    return found


def _keep_part(name: str) -> bool:
    if name in SKIP_DIR_NAMES or not name.isidentifier():
        return False
    return not (name.startswith(("test_", "_test_")) or name.endswith("_test"))


@functools.lru_cache(maxsize=8)
def _collect(root: str) -> tuple[tuple[CodeSearchPair, ...], tuple[tuple[str, int], ...]]:
    """Walk and parse ``root`` once per process: untruncated pairs in walk order, and counts of what was dropped."""
    stats: Counter[str] = Counter()
    pairs: list[CodeSearchPair] = []
    seen_ids: set[str] = set()
    seen_queries: set[str] = set()
    seen_code: set[bytes] = set()
    files = _iter_module_files(root)
    for module, path in files:
        tree, source = _parse(path, stats)
        if tree is None:
            continue
        stats["files_parsed"] += 1
        lines = _split_lines_keepends(source)
        for qualname, node in _iter_functions(tree.body, module):
            stats["functions_seen"] += 1
            candidate = _make_pair(qualname, node, lines, stats)
            if candidate is None:
                continue
            query, code = candidate
            if qualname in seen_ids:
                stats["dropped_duplicate_id"] += 1
                continue
            qkey = normalize_query(query)
            ckey = hashlib.sha1(normalize_code(code, node.name).encode()).digest()
            if qkey in seen_queries or ckey in seen_code:
                stats["dropped_near_duplicate"] += 1
                continue
            seen_ids.add(qualname)
            seen_queries.add(qkey)
            seen_code.add(ckey)
            pairs.append(CodeSearchPair(doc_id=qualname, module=module, query=query, code=code))
    stats["files_found"] = len(files)
    stats["pairs"] = len(pairs)
    if stats["files_failed"]:
        logger.warning(
            "%s: skipped %d of %d files that failed to decode or parse", root, stats["files_failed"], len(files)
        )
    logger.info(
        "%s: %d pairs from %d functions in %d files (%s)",
        root,
        len(pairs),
        stats["functions_seen"],
        stats["files_parsed"],
        ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if k.startswith("dropped_")),
    )
    return tuple(pairs), tuple(sorted(stats.items()))


def _parse(path: str, stats: Counter[str]) -> tuple[ast.Module | None, str]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        source = raw.decode(encoding)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError, LookupError) as err:
        stats["files_failed"] += 1
        logger.debug("skipping %s: %s", path, err)
        return None, ""
    return tree, source


def _iter_functions(
    body: Sequence[ast.stmt], prefix: str
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Functions and methods (nested classes included, functions inside functions not), in source order."""
    for node in body:
        if isinstance(node, _FUNC_TYPES):
            yield f"{prefix}.{node.name}", node
        elif isinstance(node, ast.ClassDef):
            yield from _iter_functions(node.body, f"{prefix}.{node.name}")
        elif isinstance(node, _CONTAINER_TYPES):
            for block in _sub_blocks(node):
                yield from _iter_functions(block, prefix)


def _sub_blocks(node: ast.stmt) -> list[list[ast.stmt]]:
    if isinstance(node, ast.If):
        return [node.body, node.orelse]
    if isinstance(node, ast.Try):
        return [node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody]
    return [node.body]  # ast.With


def _make_pair(
    qualname: str, node: ast.FunctionDef | ast.AsyncFunctionDef, lines: Sequence[str], stats: Counter[str]
) -> tuple[str, str] | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring:
        stats["dropped_no_docstring"] += 1
        return None
    query = _first_sentence(docstring)
    if (
        len(query.split()) < MIN_QUERY_WORDS
        or len(query) > MAX_QUERY_CHARS
        or not query[0].isalpha()
        or _SIGNATURE_RE.match(query)
        or not _is_wordy(query)
    ):
        stats["dropped_short_or_odd_docstring"] += 1
        return None
    rest = node.body[1:]
    if _is_trivial(node.name, rest):
        stats["dropped_trivial_body"] += 1
        return None
    code = _code_without_docstring(node, lines)
    if code is None:
        stats["dropped_layout"] += 1
        return None
    first_line = docstring.splitlines()[0].strip()
    if query in code or (first_line and first_line in code):
        stats["dropped_query_in_code"] += 1
        return None
    return query, code


def _first_sentence(docstring: str) -> str:
    paragraph = docstring.strip().split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    return _SENTENCE_END_RE.split(text, 1)[0].strip()


def _is_wordy(query: str) -> bool:
    tokens = query.split()
    return sum(bool(_WORD_RE.match(t)) for t in tokens) >= MIN_WORDY_FRACTION * len(tokens)


def _is_trivial(name: str, body: Sequence[ast.stmt]) -> bool:
    if not body or all(_is_placeholder(s) for s in body):
        return True
    needed = MIN_PRIVATE_STATEMENTS if name.startswith("_") else MIN_STATEMENTS
    statements = (n for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.stmt))
    return sum(1 for _ in itertools.islice(statements, needed)) < needed


def _is_placeholder(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return True  # `...` or a stray string
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _split_lines_keepends(source: str) -> list[str]:
    """Split like the parser does (only ``\\r\\n``, ``\\r``, ``\\n`` end a line), keeping the line ends."""
    parts = _LINE_SPLIT_KEEP_RE.split(source)
    lines = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _code_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: Sequence[str]) -> str | None:
    """The function's source (from ``def``, decorators excluded), dedented, with the docstring's lines removed."""
    doc = node.body[0]
    if doc.lineno <= node.lineno or doc.end_lineno is None or node.end_lineno is None:
        return None  # docstring on the `def` line
    if len(node.body) > 1 and node.body[1].lineno <= doc.end_lineno:
        return None  # `"""doc"""; stmt` on one line
    # ast.get_source_segment re-splits its whole source on every call (quadratic over a big file), so hand it
    # only the function's own lines, with the node's position shifted to match.
    shifted = ast.Pass(
        lineno=1,
        end_lineno=node.end_lineno - node.lineno + 1,
        col_offset=node.col_offset,
        end_col_offset=node.end_col_offset,
    )
    segment = ast.get_source_segment("".join(lines[node.lineno - 1 : node.end_lineno]), shifted)
    if segment is None:
        return None
    lines = _LINE_SPLIT_RE.split(segment)
    if len(lines) != node.end_lineno - node.lineno + 1:
        return None
    start, end = doc.lineno - node.lineno, doc.end_lineno - node.lineno
    after = end + 1
    while after < len(lines) and not lines[after].strip():
        after += 1  # blank lines that followed the docstring
    kept = lines[:start] + lines[after:]
    indent = node.col_offset
    out = [kept[0]] + [ln[indent:] if ln[:indent].strip() == "" else ln for ln in kept[1:]]
    code = "\n".join(ln.rstrip() for ln in out).strip("\n")
    return code if code.strip() else None


def _truncated(pairs: Sequence[CodeSearchPair], max_chars: int) -> list[CodeSearchPair]:
    return [
        p if len(p.code) <= max_chars else dataclasses.replace(p, code=_truncate(p.code, max_chars)) for p in pairs
    ]


def _truncate(code: str, max_chars: int) -> str:
    if len(code) <= max_chars:
        return code
    out: list[str] = []
    size = 0
    for line in code.split("\n"):
        if size + len(line) + 1 > max_chars:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out) if out else code[:max_chars]


def build_stdlib_open_qa(max_pairs: int = 4000, min_name_length: int = 5, max_chars: int = 600, seed: int = 0,
                         **kwargs: Any) -> tuple[OpenQAData, OpenQAData]:
    """(train, test) open QA over the stdlib code-search corpus: question = a function's docstring sentence, answer
    = its name. Kept only where the answer identifies the passage: the name has at least ``min_name_length``
    characters, occurs (as a word) in exactly one corpus passage, its own, and not in the question; so answer
    recall@k is the recall of the right function. Both splits share the whole corpus."""
    train, test = build_stdlib_codesearch(max_pairs=max_pairs, max_code_chars=max_chars, seed=seed, **kwargs)
    corpus = train.corpus.cast(CORPUS_FEATURES)
    texts = list(corpus["text"])
    words = Counter(w for t in texts for w in set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", t)))
    doc_row = {d: i for i, d in enumerate(corpus["doc_id"])}

    def convert(part) -> OpenQAData:
        q: dict[str, list] = {"query_id": [], "query": [], "answers": []}
        for qid, query, pos in zip(part.queries["query_id"], part.queries["query"], part.queries["positive_ids"]):
            fn = pos[0].rsplit(".", 1)[-1]
            own = texts[doc_row[pos[0]]]
            if (len(fn) < min_name_length or words[fn] != 1 or re.search(rf"\b{re.escape(fn)}\b", own) is None
                    or fn.lower() in query.lower()):
                continue
            q["query_id"].append(qid)
            q["query"].append(query)
            q["answers"].append([fn])
        return OpenQAData(datasets.Dataset.from_dict(q, features=OPEN_QA_FEATURES), corpus, "stdlib-open-qa")

    return convert(train), convert(test)
