"""The served index keeps the promises the cache keeps: verified loads (disk and Hub), whole-folder atomic saves that
never overwrite foreign files, retriever provenance, and inputs checked at the entry (issue 23)."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_corrector import CorrectorConfig, CorrectorModel, StaleCache
from hf_corrector.errors import CacheCorruptError, CacheMismatchError, ConfigError, UnsafeOverwriteError
from hf_corrector.negatives.candidates import CandidateIndex
from hf_corrector.serving import CorrectedIndex, build_corrected_index
from tests.hub_env import run_with_hub
from tests.hub_server import FakeHub
from tests.tiny import tiny_data, tiny_retriever


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust")
    train, _ = tiny_data()
    retriever = tiny_retriever(out, seed=0)
    cache = StaleCache.build(train.corpus, retriever, batch_size=32, show_progress_bar=False)
    torch.manual_seed(0)
    corrector = CorrectorModel(CorrectorConfig(embedding_dim=retriever.embedding_dim, hidden_dim=16))
    texts = list(train.corpus["text"])
    index = build_corrected_index(retriever, corrector, cache, texts, reencode_budget=0.1, show_progress_bar=False)
    return types.SimpleNamespace(out=out, train=train, retriever=retriever, cache=cache, corrector=corrector,
                                 texts=texts, index=index)


def _saved(setup, tmp_path, name="served") -> Path:
    return setup.index.save(tmp_path / name)


def _other_index_blob(setup, n=None, d=None, seed=1) -> bytes:
    n = n or len(setup.index)
    d = d or setup.index.vectors.dim
    other = CandidateIndex("flat", pool_size=10)
    other.build(F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1))
    return other.serialize().numpy().tobytes()


# -- loads are verified -----------------------------------------------------------------------------------------------
def test_save_writes_a_manifest_and_load_verifies_it(setup, tmp_path):
    path = _saved(setup, tmp_path)
    manifest = json.loads((path / "serving_manifest.json").read_text())
    assert manifest["num_rows"] == len(setup.index) == 120 and manifest["embedding_dim"] == setup.index.vectors.dim
    loaded = CorrectedIndex.load(path, retriever=setup.retriever)
    assert torch.equal(loaded.vectors.matrix(), setup.index.vectors.matrix())
    q = setup.index.vectors.matrix()[:5].float()
    assert loaded.search(q, k=3)[1] == setup.index.search(q, k=3)[1]


@pytest.mark.parametrize("verify", ["checksum", "rows"])
def test_index_of_other_vectors_is_refused_naming_the_file(setup, tmp_path, verify):
    path = _saved(setup, tmp_path)
    (path / "index.faiss").write_bytes(_other_index_blob(setup))  # same rows and dimension, other vectors
    with pytest.raises(CacheCorruptError, match=r"index\.faiss"):
        CorrectedIndex.load(path, retriever=setup.retriever, verify=verify)


def test_index_of_other_vectors_is_refused_even_without_a_manifest(setup, tmp_path):
    path = _saved(setup, tmp_path)
    (path / "serving_manifest.json").unlink()  # a folder saved before manifests existed
    (path / "index.faiss").write_bytes(_other_index_blob(setup))
    with pytest.raises(CacheCorruptError, match="disagree with an exact search"):
        CorrectedIndex.load(path, retriever=setup.retriever)


@pytest.mark.parametrize("shape", ["rows", "dim"])
def test_index_of_other_shape_is_refused_not_rebuilt(setup, tmp_path, shape):
    path = _saved(setup, tmp_path)
    (path / "serving_manifest.json").unlink()  # no checksum to catch it first
    blob = _other_index_blob(setup, n=100) if shape == "rows" else _other_index_blob(setup, d=8)
    (path / "index.faiss").write_bytes(blob)
    with pytest.raises(CacheCorruptError, match=r"index\.faiss.*(100 rows|dimension 8)"):
        CorrectedIndex.load(path)


def test_garbage_and_missing_index_files_are_refused(setup, tmp_path):
    path = _saved(setup, tmp_path)
    (path / "index.faiss").write_bytes(b"not a faiss index" * 10)
    with pytest.raises(CacheCorruptError, match=r"index\.faiss"):
        CorrectedIndex.load(path, verify="rows")
    (path / "index.faiss").unlink()  # the manifest records it: a missing index is damage, not "rebuild silently"
    with pytest.raises(CacheCorruptError, match=r"index\.faiss: missing"):
        CorrectedIndex.load(path)


def test_vectors_of_another_save_are_refused(setup, tmp_path):
    a = _saved(setup, tmp_path, "a")
    vectors = StaleCache(setup.index.vectors.doc_ids, setup.index.vectors.matrix().clone(),
                         steps=setup.index.vectors.steps, provenance=setup.index.vectors.provenance)
    vectors.update(torch.tensor([0]), F.normalize(torch.ones(1, vectors.dim), dim=-1), step=9)
    b = CorrectedIndex(vectors, show_progress_bar=False).save(tmp_path / "b")
    shutil.rmtree(a / "vectors")
    shutil.copytree(b / "vectors", a / "vectors")  # b's vectors beside a's index and manifest
    with pytest.raises(CacheCorruptError, match=r"vectors.*fingerprint in .*serving_manifest\.json"):
        CorrectedIndex.load(a)


@pytest.mark.parametrize("edit", [lambda m: m.update(num_rows="120"), lambda m: m.update(index_sha256="abc"),
                                  lambda m: m.update(num_rows=119), lambda m: m.pop("vectors_fingerprint")],
                         ids=["rows-type", "sha", "rows-value", "missing"])
def test_malformed_manifest_is_refused_naming_it(setup, tmp_path, edit):
    path = _saved(setup, tmp_path)
    manifest = json.loads((path / "serving_manifest.json").read_text())
    edit(manifest)
    (path / "serving_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match=r"serving_manifest\.json"):
        CorrectedIndex.load(path)


@pytest.mark.parametrize("value", ["garbage", "sha256-v1:xyz", "sha256-v1:" + "0" * 63, 5])
@pytest.mark.parametrize("key", ["weights_fingerprint", "texts_fingerprint", "doc_ids_fingerprint"])
def test_malformed_fingerprints_in_cache_info_are_corrupt_not_older(setup, tmp_path, key, value):
    setup.cache.save(tmp_path / "c")
    info_file = tmp_path / "c" / "cache_info.json"
    info = json.loads(info_file.read_text())
    info["provenance"][key] = value
    info_file.write_text(json.dumps(info))
    with pytest.raises(CacheCorruptError, match=rf"cache_info\.json.*provenance\.{key}"):
        StaleCache.load(tmp_path / "c", verify="rows")


# -- saves: never over foreign files, atomic as a whole ---------------------------------------------------------------
def test_save_refuses_a_folder_with_a_foreign_index(setup, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "index.faiss").write_bytes(b"someone else's index")
    with pytest.raises(UnsafeOverwriteError, match="index.faiss"):
        setup.index.save(target)
    assert (target / "index.faiss").read_bytes() == b"someone else's index"
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UnsafeOverwriteError, match="notes.txt"):
        setup.index.save(target)
    assert (target / "notes.txt").read_text() == "keep me"
    setup.cache.save(tmp_path / "a_cache")  # a stale cache folder is not a served index
    with pytest.raises(UnsafeOverwriteError):
        setup.index.save(tmp_path / "a_cache")
    assert StaleCache.load(tmp_path / "a_cache").doc_ids == setup.cache.doc_ids


def test_save_over_a_served_folder_replaces_it_and_leaves_no_temporaries(setup, tmp_path):
    path = _saved(setup, tmp_path)
    setup.index.save(path)  # an index saved before is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]
    CorrectedIndex.load(path)


# -- provenance ---------------------------------------------------------------------------------------------------
def test_other_retriever_is_refused_unless_allowed(setup, tmp_path):
    path = _saved(setup, tmp_path)
    other = tiny_retriever(setup.out / "other", seed=1)
    with pytest.raises(CacheMismatchError, match="allow_other_retriever=True"):
        CorrectedIndex.load(path, retriever=other)
    with pytest.raises(CacheMismatchError, match="another retriever"):
        CorrectedIndex(setup.index.vectors, retriever=other, show_progress_bar=False)
    loaded = CorrectedIndex.load(path, retriever=other, allow_other_retriever=True)
    assert loaded.retriever is other
    CorrectedIndex.load(path, retriever=setup.retriever)  # the recorded one is fine


def test_build_refuses_a_cache_of_other_texts(setup):
    edited = list(setup.texts)
    edited[3] = edited[3] + " (edited)"
    with pytest.raises(CacheMismatchError, match="other corpus texts"):
        build_corrected_index(setup.retriever, setup.corrector, setup.cache, edited, reencode_budget=0.1,
                              show_progress_bar=False)


# -- inputs at the entry ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [True, "0.05", 5, float("nan"), -0.1, None])
def test_bad_budget_is_refused_before_any_work(setup, budget):
    calls = []

    def encode_rows(rows):
        calls.append(rows)
        return torch.zeros(rows.numel(), setup.cache.dim)

    with pytest.raises(ConfigError, match="reencode_budget"):
        build_corrected_index(setup.retriever, setup.corrector, setup.cache, reencode_budget=budget,
                              encode_rows=encode_rows, show_progress_bar=False)
    assert calls == []

    def gathered():
        raise AssertionError("the cache was gathered before the budget was checked")

    trainer = types.SimpleNamespace(cache_manager=types.SimpleNamespace(gathered=gathered), train_examples=None)
    with pytest.raises(ConfigError, match="reencode_budget"):
        CorrectedIndex.from_trainer(trainer, reencode_budget=budget)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_bad_k_is_refused(setup, k):
    with pytest.raises(ConfigError, match=r"^k must be a positive integer"):
        setup.index.search(setup.index.vectors.matrix()[:2].float(), k=k)


def test_query_tensors_are_checked(setup):
    index, d = setup.index, setup.index.vectors.dim
    q = index.vectors.matrix()[:3].float()
    with pytest.raises(ConfigError, match=r"unsqueeze\(0\)"):
        index.search(q[0], k=2)
    with pytest.raises(ConfigError, match="floating-point"):
        index.search(torch.ones(2, d, dtype=torch.long), k=2)
    with pytest.raises(ConfigError, match=rf"\(B, {d}\)"):
        index.search(torch.zeros(2, d + 1), k=2)
    bad = q.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ConfigError, match="row 1 holds NaN"):
        index.search(bad, k=2)
    scores, ids = index.search(q.numpy(), k=2)  # a numpy array is an embedding matrix, not a list of texts
    assert ids == index.search(q, k=2)[1] and ids[0][0] == index.doc_ids[0]
    assert torch.allclose(scores[:, 0], (q * q).sum(1), atol=1e-5)


def test_query_lists_with_non_strings_are_refused_naming_the_item(setup):
    with pytest.raises(ConfigError, match=r"queries\[1\] is NoneType"):
        setup.index.search(["a query", None], k=2)
    with pytest.raises(ConfigError, match=r"queries\[0\] is int"):
        setup.index.search([3], k=2)
    scores, ids = setup.index.search([], k=2)
    assert ids == [] and scores.shape[0] == 0


# -- the Hub ------------------------------------------------------------------------------------------------------
HUB_CODE = """
    import json
    import torch
    from huggingface_hub import HfApi, CommitOperationAdd
    from tests.tiny import tiny_data, tiny_retriever
    from hf_corrector import CorrectorConfig, CorrectorModel, StaleCache
    from hf_corrector.errors import CacheCorruptError, CacheMismatchError
    from hf_corrector.negatives.candidates import CandidateIndex
    from hf_corrector.serving import CorrectedIndex, build_corrected_index

    train, _ = tiny_data()
    retriever = tiny_retriever(__import__("pathlib").Path("."))
    cache = StaleCache.build(train.corpus, retriever, batch_size=32, show_progress_bar=False)
    corrector = CorrectorModel(CorrectorConfig(embedding_dim=retriever.embedding_dim, hidden_dim=16))
    index = build_corrected_index(retriever, corrector, cache, list(train.corpus["text"]), reencode_budget=0.1,
                                  show_progress_bar=False)
    api = HfApi()
    index.push_to_hub("tester/served")
    commits = api.list_repo_commits("tester/served", repo_type="dataset")
    print("COMMITS", len(commits))
    pulled = CorrectedIndex.from_hub("tester/served", retriever=retriever)
    assert torch.equal(pulled.vectors.matrix(), index.vectors.matrix())
    try:
        CorrectedIndex.from_hub("tester/served", retriever=tiny_retriever(__import__("pathlib").Path("o"), seed=1))
    except CacheMismatchError:
        print("OTHER_RETRIEVER_REFUSED")
    other = CandidateIndex("flat", pool_size=10)
    other.build(torch.nn.functional.normalize(torch.randn(len(index), index.vectors.dim), dim=-1))
    api.create_commit("tester/served", repo_type="dataset", commit_message="swap the index",
                      operations=[CommitOperationAdd("index.faiss", other.serialize().numpy().tobytes())])
    for verify in ("checksum", "rows"):
        try:
            CorrectedIndex.from_hub("tester/served", verify=verify)
        except CacheCorruptError as err:
            assert "index.faiss" in str(err), err
            print("REFUSED", verify)
"""


def test_hub_push_is_one_commit_and_pulls_are_verified(tmp_path):
    with FakeHub() as hub:
        proc = run_with_hub(HUB_CODE, hub.url, tmp_path, timeout=240)
    out = proc.stdout
    commits = int(out.split("COMMITS ")[1].split()[0])
    assert commits <= 2, out  # repo creation (the initial commit, if the server makes one) plus one upload
    assert "OTHER_RETRIEVER_REFUSED" in out and "REFUSED checksum" in out and "REFUSED rows" in out, out
