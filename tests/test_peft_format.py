"""LoRA adapters are saved in PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``), so
``PeftModel.from_pretrained(base_encoder, folder)`` loads them; resuming from a checkpoint stays bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrieverModel
from hf_corrector.training.peft_utils import (
    PEFT_DIR,
    PEFT_QUERY_DIR,
    apply_peft,
    load_peft_retriever,
    save_peft_retriever,
)
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever

TEXTS = ["cell protein gene cancer", "virus drug trial brain blood heart w3 w4 w5", "insulin", "tumor therapy w1"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded: the tiny models are faster so on a shared machine."""


def _lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])


def _trainer(tmp_path: Path, out: str = "out", **kwargs) -> CorrectorTrainer:
    train, _ = tiny_data()
    settings = {**TINY_TRAINING_DEFAULTS, "num_negatives": 3, **kwargs}
    args = CorrectorTrainingArguments(str(tmp_path / out), **settings)
    return CorrectorTrainer(model=tiny_retriever(tmp_path, seed=0), args=args, train_dataset=train,
                            peft_config=_lora())


def _hidden(encoder: torch.nn.Module, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    encoder.eval()
    with torch.no_grad():
        return encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_saved_adapter_loads_with_peft_model_from_pretrained(tmp_path):
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))

    adapter = out / PEFT_DIR
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and sorted(config["target_modules"]) == ["query", "value"]
    assert config["base_model_name_or_path"] == "tiny-bert"  # the retriever's base, never a local path
    assert not (adapter / "README.md").exists()

    trained = trainer.retriever.encoder
    base = tiny_retriever(tmp_path, seed=0).encoder  # a fresh copy of the base encoder the run started from
    before = _hidden(base, trainer.retriever.tokenizer)
    loaded = PeftModel.from_pretrained(base, str(adapter))
    expected = _hidden(trained, trainer.retriever.tokenizer)
    got = _hidden(loaded, trainer.retriever.tokenizer)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (before - expected).abs().max().item() > 1e-4  # the adapter does change the encoder

    # the whole retriever with the re-loaded adapter encodes like the trained one; the merged root needs no peft
    again = RetrieverModel.from_pretrained(str(out))
    again.encoder = loaded
    torch.testing.assert_close(again.encode_targets(TEXTS), trainer.retriever.encode_targets(TEXTS), atol=1e-6, rtol=0)
    merged = RetrieverModel.from_pretrained(str(out))
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged.encode_targets(TEXTS), trainer.retriever.encode_targets(TEXTS),
                               atol=1e-5, rtol=0)


def test_resume_from_a_lora_checkpoint_is_bit_exact(tmp_path):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, logging_steps=3)
    a = _trainer(tmp_path / "a", **common)
    a.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-3"
    assert (checkpoint / PEFT_DIR / "adapter_model.safetensors").is_file()

    b = _trainer(tmp_path / "b", **common)
    b.train(resume_from_checkpoint=str(checkpoint))
    assert b.state.global_step == 6
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    lora = [k for k in state_a if "lora_" in k]
    assert lora and all(torch.equal(state_a[k], state_b[k]) for k in state_a), \
        max((state_a[k] - state_b[k]).abs().max().item() for k in state_a)


def test_two_towers_get_one_adapter_each_and_old_checkpoints_still_load(tmp_path):
    retriever = apply_peft(tiny_retriever(tmp_path, shared_towers=False), _lora())
    with torch.no_grad():
        for i, (name, p) in enumerate(retriever.named_parameters()):
            if "lora_B" in name:
                p.fill_(0.01 * (i % 7 + 1))  # non-zero adapters, different per tower
    save_peft_retriever(retriever, tmp_path / "two")
    for folder in (PEFT_DIR, PEFT_QUERY_DIR):
        assert (tmp_path / "two" / folder / "adapter_config.json").is_file()
    fresh = apply_peft(tiny_retriever(tmp_path, shared_towers=False), _lora())
    load_peft_retriever(fresh, tmp_path / "two")
    torch.testing.assert_close(fresh.encode_queries(TEXTS), retriever.encode_queries(TEXTS), atol=0, rtol=0)
    torch.testing.assert_close(fresh.encode_targets(TEXTS), retriever.encode_targets(TEXTS), atol=0, rtol=0)
    query = PeftModel.from_pretrained(tiny_retriever(tmp_path, shared_towers=False).query_encoder,
                                      str(tmp_path / "two" / PEFT_QUERY_DIR))
    torch.testing.assert_close(_hidden(query, retriever.tokenizer),
                               _hidden(retriever.query_encoder, retriever.tokenizer), atol=1e-6, rtol=0)

    # a checkpoint of hf-corrector <= 0.1 (raw safetensors in peft_adapter/) still resumes
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    legacy = tmp_path / "legacy" / PEFT_DIR
    legacy.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(retriever.encoder).items()},
              str(legacy / "encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(retriever.query_encoder).items()},
              str(legacy / "query_encoder.safetensors"))
    old = apply_peft(tiny_retriever(tmp_path, shared_towers=False), _lora())
    load_peft_retriever(old, tmp_path / "legacy")
    torch.testing.assert_close(old.encode_queries(TEXTS), retriever.encode_queries(TEXTS), atol=0, rtol=0)
