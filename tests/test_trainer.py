"""CorrectorTrainer end to end on a tiny random BERT retriever and synthetic topical data (each test a few seconds)."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, TrainerCallback

import hf_corrector.training.losses as losses_module
from hf_corrector import (
    CacheMismatchError,
    ConfigError,
    CorrectorConfig,
    CorrectorModel,
    CorrectorTrainer,
    CorrectorTrainingArguments,
    NonFiniteError,
    RetrieverModel,
    StaleCache,
)
from hf_corrector.cache.schema import INITIAL_STEP

from .tiny import tiny_data, tiny_retriever

NUM_DOCS = 120


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module runs single-threaded (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def data():
    return tiny_data(num_docs=NUM_DOCS, num_queries=96)  # 72 train / 24 held-out queries


def make_args(tmp_path: Path, **overrides) -> CorrectorTrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        num_negatives=3,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        cache_encode_batch_size=128,
        eval_batch_size_encode=128,
    )
    kwargs.update(overrides)
    return CorrectorTrainingArguments(**kwargs)


def make_trainer(tmp_path: Path, data, cls=CorrectorTrainer, model_seed: int = 0, trainer_kwargs=None, **overrides):
    train, test = data
    return cls(model=tiny_retriever(tmp_path, seed=model_seed), args=make_args(tmp_path, **overrides),
               train_dataset=train, eval_dataset=test, **(trainer_kwargs or {}))


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def no_dropout(trainer) -> None:
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


class RecordingTrainer(CorrectorTrainer):
    """Records every (step, cache row) used as a training target: positives and chosen negatives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.targets_by_step: dict[int, set[int]] = {}
        self.corpus_encodings = 0
        encode_corpus = self.cache_manager.encode_corpus

        def counting(*a, **kw):
            self.corpus_encodings += 1
            return encode_corpus(*a, **kw)

        self.cache_manager.encode_corpus = counting

    def _record(self, rows) -> None:
        self.targets_by_step.setdefault(self.state.global_step, set()).update(int(r) for r in rows)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._record(inputs["positive_rows"].reshape(-1).tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def choose_negatives(self, inputs):
        rows = super().choose_negatives(inputs)
        self._record(rows.reshape(-1).tolist())
        return rows

    @property
    def selected(self) -> set[int]:
        return set().union(*self.targets_by_step.values()) if self.targets_by_step else set()


# -------------------------------------------------------------------------------------------------------------------
# learning


def test_task_loss_falls_and_ndcg_rises(tmp_path, data):
    trainer = make_trainer(tmp_path, data, max_steps=30, logging_steps=5, lr_scheduler_type="constant")
    before = trainer.evaluate()["eval_ndcg@10"]
    trainer.train()
    after = trainer.evaluate()["eval_ndcg@10"]
    losses = logged(trainer, "task_loss")
    assert len(losses) == 6 and all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2, losses
    assert after > before + 0.03, (before, after)


def test_corrector_generalises_to_targets_never_selected(tmp_path):
    data = tiny_data(num_docs=300, num_queries=96)
    trainer = make_trainer(tmp_path, data, cls=RecordingTrainer, max_steps=30, logging_steps=5, correction="mlp")
    trainer.train()
    never = torch.tensor(sorted(set(range(300)) - trainer.selected))
    assert len(never) >= 40, len(never)
    g = trainer.cache_manager.encode_corpus()  # fresh
    g_stale = trainer.cache.matrix().float()
    with torch.no_grad():
        h_g = trainer.corrector(g_stale)
    cos_stale = F.cosine_similarity(g_stale[never], g[never], dim=-1).mean().item()
    cos_corrected = F.cosine_similarity(h_g[never], g[never], dim=-1).mean().item()
    assert cos_stale < 0.95, f"the encoder did not drift enough for a meaningful test (cos {cos_stale:.3f})"
    assert cos_corrected > cos_stale + 0.02, (cos_corrected, cos_stale)
    # the training-time statistic agrees: corrected embeddings are closer to the fresh ones at the end
    assert logged(trainer, "staleness_cos_corrected")[-1] > logged(trainer, "staleness_cos_stale")[-1]


# -------------------------------------------------------------------------------------------------------------------
# cache refresh and cost accounting


@pytest.mark.parametrize("steps,every", [(10, 3), (6, 3)])
def test_cache_refresh_count_and_cost(tmp_path, data, steps, every):
    trainer = make_trainer(tmp_path, data, cls=RecordingTrainer, max_steps=steps, cache_refresh_steps=every,
                           correction="none")
    assert trainer.cost["initial_cache_encodings"] == 0  # built at its first use (nothing yet to throw away)
    trainer.train()
    assert trainer.cost["initial_cache_encodings"] == NUM_DOCS
    n_refresh = steps // every
    assert trainer.corpus_encodings == n_refresh
    assert trainer.cost["num_refreshes"] == n_refresh
    assert trainer.cost["refresh_encodings"] == n_refresh * NUM_DOCS
    assert trainer.cost["step_target_encodings"] == sum(len(v) for v in trainer.targets_by_step.values())
    last_refresh = n_refresh * every
    assert (trainer.cache.steps == last_refresh).all()  # no write-back: every row comes from the last refresh
    assert trainer.total_reembedding_cost() == (NUM_DOCS + n_refresh * NUM_DOCS
                                                + trainer.cost["step_target_encodings"])
    final = trainer.state.log_history[-1]
    assert final["reembedding_num_refreshes"] == n_refresh
    assert final["reembedding_total"] == trainer.total_reembedding_cost()


def test_in_batch_only_has_no_refreshes_and_selects_no_negatives(tmp_path, data):
    class NoSelection(RecordingTrainer):
        def choose_negatives(self, inputs):
            raise AssertionError("in-batch-only training must not select negatives")

    trainer = make_trainer(tmp_path, data, cls=NoSelection, max_steps=4, num_negatives=0, correction="none")
    trainer.train()
    assert trainer.cost["num_refreshes"] == 0 and trainer.cost["refresh_encodings"] == 0
    assert trainer.corpus_encodings == 0
    # each step encodes only the batch's distinct positives
    assert trainer.cost["step_target_encodings"] == sum(len(v) for v in trainer.targets_by_step.values())
    assert 0 < trainer.cost["step_target_encodings"] <= 4 * 8
    assert math.isfinite(logged(trainer, "task_loss")[-1])


# -------------------------------------------------------------------------------------------------------------------
# every strategy from arguments alone

STRATEGIES = {
    "in_batch_only": dict(num_negatives=0, correction="none"),
    "stale_no_correction": dict(correction="none"),
    "refresh_every_2": dict(correction="none", cache_refresh_steps=2),
    "corrector_no_refresh": dict(correction="mlp"),
    "corrector_plus_refresh": dict(correction="mlp", cache_refresh_steps=2),
    "corrector_ce": dict(corrector_loss="ce"),
    "corrector_mse": dict(corrector_loss="mse"),
    "corrector_ce_mse": dict(corrector_loss="ce+mse"),
    "gumbel": dict(negative_sampling="gumbel", sampling_temperature=0.1),
    "write_back": dict(cache_write_back=True),
    "linear_corrector": dict(correction="linear"),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategy_runs_from_arguments(tmp_path, data, name):
    overrides = STRATEGIES[name]
    trainer = make_trainer(tmp_path, data, max_steps=4, **overrides)
    initial_cache = trainer.cache.matrix().clone()
    result = trainer.train()
    assert trainer.state.global_step == 4
    assert math.isfinite(result.training_loss)
    assert all(math.isfinite(x) for x in logged(trainer, "task_loss"))
    logs = [h for h in trainer.state.log_history if "task_loss" in h]
    correction = overrides.get("correction", "mlp")
    if correction == "none":
        assert trainer.corrector is None
        assert not any("corrector_loss" in h for h in logs)
    else:
        assert trainer.corrector.config.architecture == correction
        kind = overrides.get("corrector_loss", "ce+mse")
        for part in ("ce", "mse"):
            assert all((f"corrector_{part}" in h) == (part in kind.split("+")) for h in logs), (part, logs[0])
        assert all(math.isfinite(h["corrector_loss"]) for h in logs)
    refreshes = 4 // overrides["cache_refresh_steps"] if "cache_refresh_steps" in overrides else 0
    assert trainer.cost["num_refreshes"] == refreshes
    if refreshes == 0 and not overrides.get("cache_write_back"):
        assert torch.equal(trainer.cache.matrix(), initial_cache)
        assert (trainer.cache.steps == INITIAL_STEP).all()
    if name == "write_back":
        written = trainer.cache.steps != INITIAL_STEP
        assert written.any()
        assert not torch.equal(trainer.cache.matrix()[written], initial_cache[written])
        assert torch.equal(trainer.cache.matrix()[~written], initial_cache[~written])


def test_cache_write_back_marks_steps_and_stores_fresh_embeddings(tmp_path, data):
    steps = 4
    snapshot = {}

    class Snapshot(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == steps - 1:
                snapshot["retriever"] = copy.deepcopy(trainer.retriever)

    trainer = make_trainer(tmp_path, data, cls=RecordingTrainer, max_steps=steps, cache_write_back=True,
                           trainer_kwargs={"callbacks": [Snapshot()]})
    no_dropout(trainer)
    initial = trainer.cache.matrix().clone()
    trainer.train()
    last_step = {}
    for step in sorted(trainer.targets_by_step):
        for row in trainer.targets_by_step[step]:
            last_step[row] = step
    cache_steps = trainer.cache.steps
    for row in range(NUM_DOCS):
        assert cache_steps[row].item() == last_step.get(row, INITIAL_STEP), row
    untouched = [r for r in range(NUM_DOCS) if r not in last_step]
    assert torch.equal(trainer.cache.matrix()[untouched], initial[untouched])
    # rows written in the last step hold that step's encoder's (fresh) embeddings of the targets
    rows = sorted(trainer.targets_by_step[steps - 1])
    fresh = snapshot["retriever"].encode_targets([trainer.corpus_texts[r] for r in rows])
    torch.testing.assert_close(trainer.cache.matrix()[rows], fresh, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(initial[rows], fresh, atol=1e-3)


# -------------------------------------------------------------------------------------------------------------------
# optimisation details


def test_corrector_warmup_freezes_the_encoders(tmp_path, data):
    warmup = 3
    at_warmup = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                at_warmup["retriever"] = state_of(trainer.retriever)
                at_warmup["corrector"] = state_of(trainer.corrector)

    trainer = make_trainer(tmp_path, data, max_steps=warmup + 2, corrector_warmup_steps=warmup,
                           trainer_kwargs={"callbacks": [Snapshot()]})
    retriever0, corrector0 = state_of(trainer.retriever), state_of(trainer.corrector)
    trainer.train()
    assert same_state(at_warmup["retriever"], retriever0), "the encoders moved during the corrector warm-up"
    assert not same_state(at_warmup["corrector"], corrector0), "the corrector did not train during warm-up"
    assert not same_state(state_of(trainer.retriever), retriever0), "the encoders did not train after warm-up"


def test_optimizer_has_a_corrector_group_with_its_own_learning_rate(tmp_path, data):
    trainer = make_trainer(tmp_path, data, max_steps=2, learning_rate=2e-4, corrector_learning_rate=5e-3)
    optimizer = trainer.create_optimizer()
    corrector_groups = [g for g in optimizer.param_groups if g.get("group") == "corrector"]
    assert len(corrector_groups) == 1
    group = corrector_groups[0]
    assert group["lr"] == 5e-3
    corrector_ids = {id(p) for p in trainer.corrector.parameters()}
    assert {id(p) for p in group["params"]} == corrector_ids
    others = [g for g in optimizer.param_groups if g is not group]
    assert others and all(g["lr"] == 2e-4 for g in others)
    other_ids = {id(p) for g in others for p in g["params"]}
    assert not other_ids & corrector_ids
    assert other_ids | corrector_ids == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    trainer.train()
    # the encoders follow the (linear) schedule to 0; the corrector keeps its constant rate
    # (re-read the groups: accelerate may have rebuilt the group dicts when it prepared the optimizer)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups if g.get("group") == "corrector"] == [pytest.approx(5e-3)]
    assert all(g["lr"] == 0.0 for g in groups if g.get("group") != "corrector"), [(g.get("group"), g["lr"]) for g in groups]


def test_gradient_accumulation(tmp_path, data):
    trainer = make_trainer(tmp_path, data, max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=4)
    retriever0 = state_of(trainer.retriever)
    trainer.train()
    assert trainer.state.global_step == 3
    assert all(math.isfinite(x) for x in logged(trainer, "loss"))
    assert all(math.isfinite(x) for x in logged(trainer, "task_loss"))
    assert not same_state(state_of(trainer.retriever), retriever0)


# -------------------------------------------------------------------------------------------------------------------
# checkpoints, resuming, saving


@pytest.mark.parametrize("sampling", ["topk", "gumbel"])
def test_exact_resume(tmp_path, data, sampling):
    common = dict(max_steps=8, save_strategy="steps", save_steps=4, logging_steps=2, negative_sampling=sampling,
                  sampling_temperature=0.1, cache_write_back=True)
    a = make_trainer(tmp_path / "a", data, **common)
    a.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-4"
    assert (checkpoint / "stale_cache").is_dir() and (checkpoint / "corrector" / "model.safetensors").is_file()
    at_4 = load_file(str(checkpoint / "model.safetensors"))

    b = make_trainer(tmp_path / "b", data, **common)
    b.train(resume_from_checkpoint=str(checkpoint))
    assert b.state.global_step == 8
    final_a, final_b = state_of(a.retriever), state_of(b.retriever)
    assert same_state(final_a, final_b), max((final_a[k] - final_b[k]).abs().max().item() for k in final_a)
    assert same_state(state_of(a.corrector), state_of(b.corrector))
    assert not all(torch.equal(at_4[k], final_b[k]) for k in at_4 if k in final_b)  # B trained past the checkpoint
    assert torch.equal(a.cache.matrix(), b.cache.matrix())
    assert torch.equal(a.cache.steps, b.cache.steps)
    assert (a.cache.steps >= 4).any() and (a.cache.steps < 4).any()  # both halves of the run wrote to the cache
    assert a.cost == b.cost


def test_save_model_is_loadable(tmp_path, data):
    trainer = make_trainer(tmp_path, data, max_steps=3)
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    texts = [trainer.corpus_texts[i] for i in range(5)]
    expected = trainer.retriever.encode_targets(texts)
    expected_q = trainer.retriever.encode_queries(texts)

    loaded = RetrieverModel.from_pretrained(str(out))
    assert loaded.tokenizer is not None
    torch.testing.assert_close(loaded.encode_targets(texts), expected)
    torch.testing.assert_close(loaded.encode_queries(texts), expected_q)
    auto = AutoModel.from_pretrained(str(out))
    assert isinstance(auto, RetrieverModel)
    assert same_state(state_of(auto), state_of(loaded))

    corrector = CorrectorModel.from_pretrained(str(out / "corrector"))
    x = torch.randn(7, trainer.retriever.embedding_dim)
    with torch.no_grad():
        assert torch.equal(corrector(x), trainer.corrector(x))
        assert not torch.equal(corrector(x), x)  # trained: not the identity any more
    auto_corrector = AutoModel.from_pretrained(str(out / "corrector"))
    assert isinstance(auto_corrector, CorrectorModel)
    assert (out / "training_args.json").is_file() and (out / "reembedding_cost.json").is_file()


@pytest.mark.parametrize("greater_is_better", [True, False])
def test_load_best_model_at_end_by_ndcg(tmp_path, data, greater_is_better):
    # greater_is_better=False makes an early checkpoint the "best" one, so loading it at the end really changes state
    trainer = make_trainer(tmp_path, data, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                           save_steps=2, load_best_model_at_end=True, metric_for_best_model="ndcg@10",
                           greater_is_better=greater_is_better, cache_write_back=True,
                           eval_corpus_embeddings="fresh,stale,corrected")
    trainer.train()
    scores = logged(trainer, "eval_ndcg@10")
    assert len(scores) == 3
    assert logged(trainer, "eval_stale_ndcg@10") and logged(trainer, "eval_corrected_ndcg@10")
    assert trainer.state.best_model_checkpoint is not None
    assert trainer.state.best_metric == pytest.approx(max(scores) if greater_is_better else min(scores))
    best = Path(trainer.state.best_model_checkpoint)
    best_weights = load_file(str(best / "model.safetensors"))
    final = state_of(trainer.retriever)
    assert all(torch.equal(best_weights[k], final[k]) for k in best_weights)
    best_corrector = load_file(str(best / "corrector" / "model.safetensors"))
    final_corrector = state_of(trainer.corrector)
    assert all(torch.equal(best_corrector[k], final_corrector[k]) for k in best_corrector)
    best_cache = StaleCache.load(best / "stale_cache")
    assert torch.equal(trainer.cache.matrix(), best_cache.matrix())
    assert torch.equal(trainer.cache.steps, best_cache.steps)
    # encodings spent stay spent: loading the best checkpoint does not roll the cost back to its older counts
    spent = logged(trainer, "reembedding_cost")[-1]
    assert trainer.total_reembedding_cost() >= spent > 0
    assert logged(trainer, "reembedding_total")[-1] == trainer.total_reembedding_cost()


def test_peft_lora_trains_only_adapters_and_corrector(tmp_path, data):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    trainer = make_trainer(tmp_path, data, max_steps=3, trainer_kwargs={"peft_config": config})
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("corrector.") for n in trainable), trainable
    assert any("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for name, value in before.items():
        if "lora_" in name or name.startswith("corrector."):
            continue
        assert torch.equal(value, after[name].detach()), f"base weight {name} changed"
    assert any(not torch.equal(before[n], after[n].detach()) for n in before if "lora_B" in n)
    assert any(not torch.equal(before[n], after[n].detach()) for n in before if n.startswith("corrector."))

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    loaded = RetrieverModel.from_pretrained(str(out))
    texts = [trainer.corpus_texts[i] for i in range(4)]
    torch.testing.assert_close(loaded.encode_targets(texts), trainer.retriever.encode_targets(texts),
                               rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in loaded.state_dict())


# -------------------------------------------------------------------------------------------------------------------
# bad input


def test_corrector_dimension_mismatch(tmp_path, data):
    wrong = CorrectorModel(CorrectorConfig(embedding_dim=16))
    with pytest.raises(CacheMismatchError, match="16"):
        make_trainer(tmp_path, data, trainer_kwargs={"corrector": wrong})


def test_cache_for_another_corpus(tmp_path, data):
    other_ids = [f"other{i}" for i in range(NUM_DOCS)]
    cache = StaleCache(other_ids, torch.randn(NUM_DOCS, 32))
    with pytest.raises(CacheMismatchError, match="other0"):
        make_trainer(tmp_path, data, trainer_kwargs={"cache": cache})
    shorter = StaleCache([f"d{i}" for i in range(10)], torch.randn(10, 32))
    with pytest.raises(CacheMismatchError, match="10"):
        make_trainer(tmp_path, data, trainer_kwargs={"cache": shorter})
    wrong_dim = StaleCache([f"d{i}" for i in range(NUM_DOCS)], torch.randn(NUM_DOCS, 8))
    with pytest.raises(CacheMismatchError, match="dimension"):
        make_trainer(tmp_path, data, trainer_kwargs={"cache": wrong_dim})


def test_too_many_negatives(tmp_path, data):
    with pytest.raises(ConfigError, match="num_negatives"):
        make_trainer(tmp_path, data, num_negatives=NUM_DOCS)


@pytest.mark.parametrize("bad", [dict(negative_sampling="x"), dict(correction="x"), dict(corrector_loss="x"),
                                 dict(num_negatives=-1), dict(nonfinite_action="x"), dict(cache_refresh_steps=-1)])
def test_invalid_arguments(tmp_path, bad):
    with pytest.raises(ConfigError):
        make_args(tmp_path, **bad)


# -------------------------------------------------------------------------------------------------------------------
# non-finite safety


def _nan_task_loss_at(monkeypatch, holder, bad_step):
    original = losses_module.task_loss

    def patched(*args, **kwargs):
        loss = original(*args, **kwargs)
        if holder["trainer"].state.global_step == bad_step:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(losses_module, "task_loss", patched)


def test_nonfinite_loss_raises_naming_the_step(tmp_path, data, monkeypatch):
    holder = {}
    _nan_task_loss_at(monkeypatch, holder, 3)
    trainer = holder["trainer"] = make_trainer(tmp_path, data, max_steps=6)
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    assert "loss" in message and re.search(r"step 3\b", message), message
    assert trainer.state.global_step == 3


def test_nonfinite_loss_skip(tmp_path, data, monkeypatch):
    holder = {}
    _nan_task_loss_at(monkeypatch, holder, 3)
    trainer = holder["trainer"] = make_trainer(tmp_path, data, max_steps=6, logging_steps=2, nonfinite_action="skip")
    trainer.train()
    assert trainer.state.global_step == 6
    assert sum(logged(trainer, "skipped_steps")) == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(x) for x in logged(trainer, "task_loss"))
