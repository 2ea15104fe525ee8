"""Property tests: well-formed data round-trips exactly; any malformed input either loads or raises
:class:`~hf_corrector.errors.HFCorrectorError`, never another exception."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_corrector.data import RetrievalData, load_beir, load_pairs, load_retrieval_data, load_tevatron
from hf_corrector.errors import DataFormatError, HFCorrectorError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ID_ALPHABET = string.ascii_letters + string.digits + "-_.:/"
ids = st.text(ID_ALPHABET, min_size=1, max_size=6)
texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=20)
nonblank = texts.filter(lambda t: t.strip() != "")
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["docid", "title", "text", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)


def _join(title: str, text: str) -> str:
    title, text = title.strip(), text.strip()
    return f"{title} {text}" if title and text else title or text


def check_invariants(data: RetrievalData) -> None:
    """What every successfully loaded RetrievalData satisfies."""
    data.validate()
    doc_ids = data.corpus["doc_id"]
    assert len(set(doc_ids)) == len(doc_ids) > 0
    assert data.num_queries > 0
    known = set(doc_ids)
    for pos, neg in zip(data.queries["positive_ids"], data.queries["negative_ids"], strict=True):
        assert pos and set(pos) <= known and set(neg) <= known
        assert not set(pos) & set(neg)
        assert len(set(pos)) == len(pos)
    assert all(t.strip() for t in data.corpus["text"])
    assert all(q.strip() for q in data.queries["query"])


# ------------------------------------------------------------------------------------------------------- BEIR


@st.composite
def beir_folders(draw: st.DrawFn) -> dict[str, Any]:
    """A valid BEIR folder (as Python values) and the result loading it must give."""
    docs = draw(
        st.dictionaries(ids, st.tuples(st.one_of(st.none(), texts), texts), min_size=1, max_size=6).filter(
            lambda d: all(_join(t or "", x) for t, x in d.values())
        )
    )
    queries = draw(st.dictionaries(ids, nonblank, min_size=1, max_size=5))
    doc_list, q_list = list(docs), list(queries)
    qrels = draw(
        st.lists(
            st.tuples(st.sampled_from(q_list), st.sampled_from(doc_list), st.integers(-1, 3)), min_size=0, max_size=10
        )
    )
    forced = (draw(st.sampled_from(q_list)), draw(st.sampled_from(doc_list)), 1)
    qrels.insert(draw(st.integers(0, len(qrels))), forced)  # at least one positive
    return {
        "docs": docs,
        "queries": queries,
        "qrels": qrels,
        "crlf": draw(st.booleans()),
        "header": draw(st.booleans()),
    }


def beir_files(spec: dict[str, Any]) -> dict[str, bytes]:
    nl = "\r\n" if spec["crlf"] else "\n"
    corpus = []
    for doc_id, (title, text) in spec["docs"].items():
        row: dict[str, Any] = {"_id": doc_id, "text": text}
        if title is not None:
            row["title"] = title
        corpus.append(json.dumps(row, ensure_ascii=False))
    queries = [json.dumps({"_id": q, "text": t}, ensure_ascii=False) for q, t in spec["queries"].items()]
    qrels = (["query-id\tcorpus-id\tscore"] if spec["header"] else []) + [
        f"{q}\t{d}\t{s}" for q, d, s in spec["qrels"]
    ]
    return {
        "corpus.jsonl": (nl.join(corpus) + nl).encode("utf-8"),
        "queries.jsonl": (nl.join(queries) + nl).encode("utf-8"),
        "qrels/train.tsv": (nl.join(qrels) + nl).encode("utf-8"),
    }


def expected_beir(spec: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    positives: dict[str, list[str]] = {}
    for q, d, s in spec["qrels"]:
        if s > 0 and d not in positives.setdefault(q, []):
            positives[q].append(d)
    queries = [
        {"query_id": q, "query": t.strip(), "positive_ids": positives[q], "negative_ids": []}
        for q, t in spec["queries"].items()
        if positives.get(q)
    ]
    corpus = [{"doc_id": d, "text": _join(t or "", x)} for d, (t, x) in spec["docs"].items()]
    return queries, corpus


def write_files(root: Path, files: dict[str, bytes | None]) -> None:
    for name, content in files.items():
        if content is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@SETTINGS
@given(spec=beir_folders())
def test_valid_beir_round_trips_exactly(spec):
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp), beir_files(spec))
        data = load_beir(tmp)
    queries, corpus = expected_beir(spec)
    assert data.queries.to_list() == queries
    assert data.corpus.to_list() == corpus
    check_invariants(data)


mutations = st.one_of(
    st.tuples(
        st.just("replace_line"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"]),
        st.integers(0, 20),
        st.binary(max_size=40),
    ),
    st.tuples(
        st.just("garble_line"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl"]),
        st.integers(0, 20),
        st.integers(0, 60),
    ),
    st.tuples(
        st.just("drop_field"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl"]),
        st.integers(0, 20),
        st.sampled_from(["_id", "text", "title"]),
    ),
    st.tuples(
        st.just("set_field"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl"]),
        st.integers(0, 20),
        st.tuples(st.sampled_from(["_id", "text", "title"]), json_values),
    ),
    st.tuples(
        st.just("duplicate_line"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"]),
        st.integers(0, 20),
        st.none(),
    ),
    st.tuples(
        st.just("add_qrels"),
        st.just("qrels/train.tsv"),
        st.integers(0, 20),
        st.lists(st.one_of(ids, st.text(max_size=5), st.sampled_from(["1", "0", "-1", "nan", "x"])), max_size=5),
    ),
    st.tuples(
        st.just("random_file"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"]),
        st.just(0),
        st.binary(max_size=80),
    ),
    st.tuples(
        st.just("delete_file"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"]),
        st.just(0),
        st.none(),
    ),
    # harmless ones: the folder must still load
    st.tuples(
        st.just("replace_line"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"]),
        st.integers(0, 20),
        st.sampled_from([b"", b"  ", b"\r"]),
    ),
    st.tuples(
        st.just("set_field"),
        st.sampled_from(["corpus.jsonl", "queries.jsonl"]),
        st.integers(0, 20),
        st.tuples(st.sampled_from(["metadata", "extra"]), json_values),
    ),
)


def mutate(files: dict[str, bytes | None], mutation: tuple) -> None:
    kind, name, index, arg = mutation
    content = files[name]
    if kind == "delete_file":
        files[name] = None
        return
    if kind == "random_file":
        files[name] = arg
        return
    if content is None:
        return
    lines = content.split(b"\n")
    i = index % len(lines)
    if kind == "replace_line":
        lines[i] = arg
    elif kind == "garble_line":
        lines[i] = lines[i][: arg % (len(lines[i]) + 1)]
    elif kind in ("drop_field", "set_field"):
        try:
            obj = json.loads(lines[i])
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if kind == "drop_field":
            obj.pop(arg, None)
        else:
            obj[arg[0]] = arg[1]
        lines[i] = json.dumps(obj).encode()
    elif kind == "duplicate_line":
        lines.insert(i, lines[i])
    elif kind == "add_qrels":
        lines.insert(i, "\t".join(arg).encode("utf-8", "surrogatepass"))
    files[name] = b"\n".join(lines)


@SETTINGS
@given(
    spec=beir_folders(),
    muts=st.lists(mutations, min_size=1, max_size=3),
    split=st.sampled_from(["train", "train", "test"]),
)
def test_malformed_beir_load_or_raise_our_error(spec, muts, split):
    files: dict[str, bytes | None] = dict(beir_files(spec))
    for m in muts:
        mutate(files, m)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        root.mkdir()
        write_files(root, files)
        try:
            data = load_beir(root, split=split)
        except HFCorrectorError as err:
            assert str(root) in str(err)  # names the file (or the folder)
            return
    check_invariants(data)


@SETTINGS
@given(spec=beir_folders(), which=st.sampled_from(["corpus.jsonl", "queries.jsonl"]), data=st.data())
def test_duplicated_line_always_raises_naming_both_lines(spec, which, data):
    files = beir_files(spec)
    lines = files[which].split(b"\n")[:-1]
    i = data.draw(st.integers(0, len(lines) - 1))
    lines.insert(i + 1, lines[i])
    files[which] = b"\n".join(lines) + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp), files)
        try:
            load_beir(tmp)
        except DataFormatError as err:
            assert f"{Path(tmp) / which}:{i + 2}: duplicate" in str(err)
            assert f"(first on line {i + 1})" in str(err)
        else:
            raise AssertionError("a duplicated line must raise")


# --------------------------------------------------------------------------------------------------- Tevatron


# a docid's text is a function of the docid (so rows agree), except for the rare conflicting "b" passage
passages = st.sampled_from(["a", "b", "c", "d", 1, 2]).flatmap(
    lambda d: st.fixed_dictionaries(
        {"docid": st.just(d), "title": st.just("T" if d in ("a", 1) else ""), "text": st.just(f"text of {d}")}
    )
)
conflicting = st.just({"docid": "b", "title": "", "text": "another text of b"})


@st.composite
def tevatron_rows(draw: st.DrawFn) -> Any:
    """Mostly well-formed rows; about one in three has one broken field, a missing field or is not a dict."""
    row: dict[str, Any] = {
        "query_id": draw(st.one_of(ids, st.integers(0, 10**6))),
        "query": draw(nonblank),
        "positive_passages": draw(st.lists(passages, min_size=1, max_size=3)),
        "negative_passages": draw(st.lists(passages, max_size=3)),
    }
    damage = draw(st.integers(0, 14))
    key = draw(st.sampled_from(sorted(row)))
    if damage == 0:
        row[key] = draw(json_values)
    elif damage == 1:
        del row[key]
    elif damage == 2:
        row[draw(st.sampled_from(["positive_passages", "negative_passages"]))].append(
            draw(st.one_of(json_values, conflicting))
        )
    elif damage == 3:
        row["positive_passages"] = [
            dict(row["positive_passages"][0], **{draw(st.sampled_from(["docid", "title", "text"])): draw(json_values)})
        ]
    elif damage == 4:
        return draw(json_values)
    return row


@SETTINGS
@given(rows=st.lists(tevatron_rows(), max_size=5), as_file=st.booleans())
def test_random_tevatron_rows_load_or_raise_our_error(rows, as_file):
    with tempfile.TemporaryDirectory() as tmp:
        source: Any = rows
        if as_file:
            source = Path(tmp) / "train.jsonl"
            source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        try:
            data = load_tevatron(source)
        except HFCorrectorError:
            return
    check_invariants(data)
    assert data.num_queries == len(rows)
    assert set(data.queries["query_id"]) == {str(r["query_id"]) for r in rows}


@st.composite
def id_layout(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """Tevatron id-layout rows and a corpus, mostly consistent; sometimes one value is broken."""
    corpus: list[Any] = [
        {"docid": d, "title": draw(st.sampled_from(["", "T"])), "text": f"text of {d}"} for d in ["a", "b", "c", "1"]
    ]
    doc_ids = st.sampled_from(["a", "b", "c", 1, "1"])
    rows: list[Any] = [
        {
            "query_id": qid,
            "query_text": draw(nonblank),
            "positive_document_ids": draw(st.lists(doc_ids, min_size=1, max_size=3)),
            "negative_document_ids": draw(st.lists(doc_ids, max_size=3)),
        }
        for qid in draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    ]
    damage = draw(st.integers(0, 7))
    if damage == 0:
        row = draw(st.sampled_from(rows))
        row[draw(st.sampled_from(sorted(row)))] = draw(json_values)
    elif damage == 1:
        doc = draw(st.sampled_from(corpus))
        doc[draw(st.sampled_from(["docid", "title", "text"]))] = draw(json_values)
    elif damage == 2:
        draw(st.sampled_from(rows))["negative_document_ids"].append(draw(st.sampled_from(["zz", "", None, 2.5])))
    elif damage == 3:
        corpus.append(draw(st.one_of(json_values, st.just({"docid": "a", "text": "a different text"}))))
    elif damage == 4:
        rows.append(dict(rows[0]))  # a repeated query id
    return rows, corpus


@SETTINGS
@given(case=id_layout())
def test_random_tevatron_id_layout_load_or_raise_our_error(case):
    rows, corpus = case
    try:
        data = load_retrieval_data(rows, corpus=corpus, format="tevatron")
    except HFCorrectorError:
        return
    check_invariants(data)
    assert data.num_queries == len(rows)
    assert data.num_docs == len({str(d["docid"]) for d in corpus})


@SETTINGS
@given(
    content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
)
def test_random_bytes_as_a_tevatron_file(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(content)
        try:
            data = load_retrieval_data(path)
        except HFCorrectorError as err:
            assert str(path) in str(err) or "pairs" in str(err) or "column" in str(err)
            return
    check_invariants(data)


# --------------------------------------------------------------------------------------------- pairs columns


@st.composite
def pair_columns(draw: st.DrawFn) -> dict[str, list[Any]]:
    """A dict of 3-row columns: mostly texts under ST names (or positional names), sometimes broken values."""
    names = draw(
        st.one_of(
            st.just(["anchor", "positive"]),
            st.just(["anchor", "positive", "negative"]),
            st.just(["negative_2", "anchor", "negative_1", "positive"]),
            st.just(["q", "d", "label"]),
            st.lists(
                st.sampled_from(["anchor", "positive", "negative", "negative_1", "label", "q", "d"]),
                max_size=4,
                unique=True,
            ),
        )
    )
    pool = draw(st.lists(nonblank, min_size=1, max_size=4))  # repeated texts merge queries / docs
    columns: dict[str, list[Any]] = {
        n: [1, 0, 1] if n == "label" else draw(st.lists(st.sampled_from(pool), min_size=3, max_size=3)) for n in names
    }
    if names and draw(st.integers(0, 3)) == 0:
        columns[draw(st.sampled_from(names))][draw(st.integers(0, 2))] = draw(json_values)
    return columns


@SETTINGS
@given(columns=pair_columns())
def test_random_pair_columns_load_or_raise_our_error(columns):
    try:
        data = load_pairs(columns)
    except HFCorrectorError:
        return
    check_invariants(data)
    assert data.num_queries <= 3
    text_values = {v for n, vs in columns.items() if n != "label" for v in vs if isinstance(v, str)}
    assert set(data.corpus["text"]) <= text_values
