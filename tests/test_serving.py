"""The deployable corrected index (hf_corrector.serving): maps, row selection, build, search, save/load, Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_corrector import CorrectorConfig, CorrectorModel, CorrectorTrainer, CorrectorTrainingArguments
from hf_corrector.errors import ConfigError
from hf_corrector.serving import CORRECTED_STEP, CorrectedIndex, build_corrected_index, fit_map, select_rows, serve_matrix
from tests.hub_env import run_with_hub
from tests.hub_server import FakeHub
from tests.tiny import tiny_data, tiny_retriever


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# maps
def test_procrustes_recovers_a_rotation():
    x = _unit(200, 16, 0)
    r = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))[0]
    m = fit_map("procrustes", x, x @ r)
    assert torch.allclose(m(x), x @ r, atol=1e-4)
    assert torch.allclose(m.rotation @ m.rotation.T, torch.eye(16), atol=1e-5)


def test_lowrank_affine_recovers_a_low_rank_residual_and_caps_the_rank():
    x = _unit(300, 16, 2)
    u, v = torch.randn(16, 2), torch.randn(2, 16)
    y = x + x @ (u @ v) * 0.3 + 0.05
    m = fit_map("lowrank_affine", x, y, rank=2, ridge=1e-8)
    assert torch.allclose(m(x), y, atol=1e-3)
    assert torch.linalg.matrix_rank(m.weight, atol=1e-4) == 2
    m1 = fit_map("lowrank_affine", x, y, rank=1, ridge=1e-8)
    assert torch.linalg.matrix_rank(m1.weight, atol=1e-4) == 1
    assert float(((m1(x) - y) ** 2).sum()) > float(((m(x) - y) ** 2).sum())


def test_corrector_ridge_starts_from_the_corrector_and_fits_the_residual():
    torch.manual_seed(0)
    corrector = CorrectorModel(CorrectorConfig(embedding_dim=8, hidden_dim=16)).eval()
    with torch.no_grad():  # a non-trivial corrector: h(x) = x + mlp(x)
        corrector.mlp[-1].weight.normal_(0, 0.1)
    x = _unit(400, 8, 3)
    with torch.no_grad():
        hx = corrector(x)
    a = torch.eye(8) + 0.2 * torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    y = hx @ a
    m = fit_map("corrector_ridge", x, y, corrector, ridge=1e-8)
    assert torch.allclose(m(x), y, atol=1e-3)
    # with no re-encoded rows it is the corrector itself
    assert torch.allclose(fit_map("corrector", x[:0], y[:0], corrector)(x), hx, atol=1e-6)


def test_ridge_cv_prefers_strong_shrinkage_on_pure_noise():
    x = _unit(100, 8, 5)
    noise = 0.1 * torch.randn(100, 8, generator=torch.Generator().manual_seed(6))
    m = fit_map("lowrank_affine", x, x + noise, rank=8)  # lambda by CV
    # the fitted residual is small: the map stays close to the identity
    assert float(m.weight.norm()) < 0.5


def test_residual_mlp_reduces_the_error_and_unknown_maps_are_refused():
    x = _unit(200, 8, 7)
    y = x + 0.5 * torch.tanh(3 * x)
    m = fit_map("residual_mlp", x, y, epochs=200, seed=0)
    with torch.no_grad():
        assert float(((m(x) - y) ** 2).sum(-1).mean()) < 0.1 * float(((x - y) ** 2).sum(-1).mean())
    with pytest.raises(ConfigError, match="unknown deployment map"):
        fit_map("pca", x, y)
    with pytest.raises(ConfigError, match="needs re-encoded rows"):
        fit_map("procrustes", x[:0], y[:0])


# ---------------------------------------------------------------------------------------------------------------------
# selection and serving
def test_select_rows_budget_and_retrieved_rule():
    assert select_rows(1000, 0.05, "random", seed=0).numel() == 50
    assert select_rows(1000, 0.0).numel() == 0
    assert torch.equal(select_rows(1000, 0.05, seed=3), select_rows(1000, 0.05, seed=3))
    corpus = torch.eye(6)
    queries = torch.tensor([[1.0, 0.5, 0, 0, 0, 0], [1.0, 0, 0.5, 0, 0, 0], [0.9, 0, 0, 0, 0, 1.0]])
    # row 0 is in every query's top-1..2, rows 1/2/5 in one each
    rows = select_rows(6, 1 / 6, "retrieved", queries=queries, corpus=corpus, k=2)
    assert rows.tolist() == [0]
    with pytest.raises(ConfigError, match="fraction"):
        select_rows(10, 1.5)


def test_serve_matrix_maps_writes_fresh_rows_and_normalises():
    stale = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    out = serve_matrix(stale, lambda x: 2 * x, torch.tensor([2]), torch.tensor([[0.0, 5.0]]), normalize=True,
                       chunk_size=1)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------------------------------
# end to end on the tiny model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    train, test = tiny_data()
    args = CorrectorTrainingArguments(str(out / "run"), max_steps=6, per_device_train_batch_size=4, num_negatives=3,
                                      report_to=[], use_cpu=True, seed=0, save_strategy="no", learning_rate=1e-3,
                                      disable_tqdm=True)
    trainer = CorrectorTrainer(model=tiny_retriever(out), args=args, train_dataset=train, eval_dataset=test)
    trainer.train()
    return trainer, test, out


def test_from_trainer_counts_reencodings_marks_rows_and_serves_fresh_rows(trained):
    trainer, test, _ = trained
    before = trainer.cost["refresh_encodings"]
    index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.1, show_progress_bar=False)
    n = len(trainer.doc_ids)
    assert trainer.cost["refresh_encodings"] - before == round(0.1 * n) == 12
    info = index.serving_info
    assert info["method"] == "corrector_ridge" and info["reencoded_rows"] == 12 and info["reencode_budget"] == 0.1
    assert info["selection"] == "random" and info["corrector"]["architecture"] == "mlp"
    fresh_rows = (index.vectors.steps == trainer.state.global_step).nonzero().flatten()
    assert fresh_rows.numel() == 12 and int((index.vectors.steps == CORRECTED_STEP).sum()) == n - 12
    with torch.no_grad():
        fresh = trainer.retriever.encode_targets([trainer.corpus_texts[i] for i in fresh_rows.tolist()])
    assert torch.allclose(index.vectors.matrix()[fresh_rows], F.normalize(fresh, dim=-1), atol=1e-5)
    # closer to a fresh encoding of the whole corpus than the stale cache is
    with torch.no_grad():
        all_fresh = trainer.retriever.encode_targets(trainer.corpus_texts)
    cos_served = F.cosine_similarity(index.vectors.matrix(), all_fresh).mean()
    cos_stale = F.cosine_similarity(trainer.cache.matrix(), all_fresh).mean()
    assert cos_served > cos_stale


def test_search_by_text_and_by_embedding_agree_with_exact_scores(trained):
    trainer, test, _ = trained
    index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.05, selection="retrieved", show_progress_bar=False)
    assert index.serving_info["selection"] == "retrieved" and index.serving_info["reencoded_rows"] == 6
    queries = list(test.queries["query"])[:4]
    scores, ids = index.search(queries, k=5)
    assert scores.shape == (4, 5) and all(len(r) == 5 for r in ids)
    with torch.no_grad():
        q = trainer.retriever.encode_queries(queries)
    exact = q @ index.vectors.matrix().T
    top = exact.topk(5, dim=1)
    assert torch.allclose(scores, top.values, atol=1e-4)
    assert ids[0][0] == trainer.doc_ids[int(top.indices[0, 0])]
    s2, ids2 = index.search(q, k=5)
    assert ids2 == ids
    with pytest.raises(ConfigError, match="needs the retriever"):
        CorrectedIndex(index.vectors, show_progress_bar=False).search(["cell"], k=1)


def test_save_load_round_trip(trained):
    trainer, test, out = trained
    index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.1, show_progress_bar=False)
    index.save(out / "served")
    assert (out / "served" / "index.faiss").is_file() and (out / "served" / "vectors" / "cache.arrow").is_file()
    loaded = CorrectedIndex.load(out / "served", retriever=trainer.retriever)
    assert torch.equal(loaded.vectors.matrix(), index.vectors.matrix())
    assert torch.equal(loaded.vectors.steps, index.vectors.steps)
    assert loaded.serving_info == json.loads(json.dumps(index.serving_info))
    queries = list(test.queries["query"])
    assert loaded.search(queries, k=3)[1] == index.search(queries, k=3)[1]


def test_budget_zero_serves_the_normalised_corrector_output(trained):
    trainer, _, _ = trained
    before = dict(trainer.cost)
    index = build_corrected_index(trainer.retriever, trainer.corrector, trainer.cache, reencode_budget=0.0,
                                  show_progress_bar=False)
    assert trainer.cost == before and index.serving_info["method"] == "corrector"
    with torch.no_grad():
        expected = F.normalize(trainer.corrector.eval()(trainer.cache.matrix().float()), dim=-1)
    assert torch.allclose(index.vectors.matrix(), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="reencode_budget > 0"):
        build_corrected_index(trainer.retriever, trainer.corrector, trainer.cache, reencode_budget=0.0,
                              method="procrustes", show_progress_bar=False)


HUB_CODE = """
    from pathlib import Path
    import torch
    from tests.tiny import tiny_data, tiny_retriever
    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
    from hf_corrector.serving import CorrectedIndex

    train, test = tiny_data()
    args = CorrectorTrainingArguments("run", max_steps=4, per_device_train_batch_size=4, num_negatives=3,
                                      report_to=[], use_cpu=True, seed=0, save_strategy="no", disable_tqdm=True)
    trainer = CorrectorTrainer(model=tiny_retriever(Path(".")), args=args, train_dataset=train)
    trainer.train()
    index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.1, show_progress_bar=False)
    index.push_to_hub("tester/tiny-served")
    pulled = CorrectedIndex.from_hub("tester/tiny-served", retriever=trainer.retriever)
    assert torch.equal(pulled.vectors.matrix(), index.vectors.matrix())
    assert torch.equal(pulled.vectors.steps, index.vectors.steps)
    assert pulled.serving_info["reencoded_rows"] == 12, pulled.serving_info
    assert pulled.faiss_index.num_rows == 120
    queries = list(test.queries["query"])
    assert pulled.search(queries, k=3)[1] == index.search(queries, k=3)[1]
    print("HUB_OK", pulled.serving_info["method"])
"""


def test_push_to_hub_and_from_hub(tmp_path):
    with FakeHub() as hub:
        proc = run_with_hub(HUB_CODE, hub.url, tmp_path, timeout=240)
    assert "HUB_OK corrector_ridge" in proc.stdout
