"""The FakeHub (tests/hub_server.py) against the REAL huggingface_hub / transformers / datasets clients.

Every client call runs in a subprocess (tests/hub_env.py) because the HF libraries read
HF_ENDPOINT at import time. Nothing is mocked on the client side.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.conftest_hub import fake_hub  # noqa: F401  (fixture, also available via the plugin)
from tests.hub_env import run_with_hub


def _assert_known_routes_only(hub) -> None:
    assert hub.unknown_routes == [], f"client hit routes FakeHub does not implement: {hub.unknown_routes}"


def test_bert_push_and_reload_root_and_subfolder(fake_hub, tmp_path):  # noqa: F811
    code = """
        import os, shutil
        import torch
        from huggingface_hub import HfApi, hf_hub_download, list_repo_files, snapshot_download
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, vocab_size=100)
        model = BertModel(cfg).eval()
        ids = torch.tensor([[1, 5, 7, 9, 2]])
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state

        model.push_to_hub("tester/tiny-bert")
        model.save_pretrained("local_copy")
        HfApi().upload_folder(repo_id="tester/tiny-bert", folder_path="local_copy", path_in_repo="corrector")

        shutil.rmtree(os.environ["HF_HOME"])  # nothing cached: the reload must come from the server
        for kwargs in ({}, {"subfolder": "corrector"}):
            again = BertModel.from_pretrained("tester/tiny-bert", **kwargs).eval()
            with torch.no_grad():
                out = again(input_ids=ids).last_hidden_state
            assert torch.equal(out, ref), kwargs

        files = list_repo_files("tester/tiny-bert")
        assert {"config.json", "model.safetensors", "corrector/config.json", "corrector/model.safetensors"} <= set(files), files
        snap = snapshot_download("tester/tiny-bert")
        assert os.path.isfile(os.path.join(snap, "corrector", "model.safetensors"))
        with open(hf_hub_download("tester/tiny-bert", "config.json")) as f:
            assert '"hidden_size": 32' in f.read()
        print("OK")
    """
    proc = run_with_hub(code, fake_hub.url, tmp_path)
    assert proc.stdout.strip().endswith("OK")
    files = fake_hub.files("tester/tiny-bert")
    assert "model.safetensors" in files and "corrector/model.safetensors" in files
    # weights went through the LFS batch + PUT store, not inline base64
    assert fake_hub.lfs_store and any(r.startswith("PUT /lfs-upload/") and r.endswith("-> 200") for r in fake_hub.requests)
    _assert_known_routes_only(fake_hub)


def test_dataset_push_and_load_fixed_length_embeddings(fake_hub, tmp_path):  # noqa: F811
    code = """
        import os, shutil
        import numpy as np
        from datasets import Dataset, Features, List, Value, load_dataset

        rng = np.random.default_rng(0)
        emb = rng.standard_normal((6, 8)).astype("float32")
        features = Features({"doc_id": Value("string"), "embedding": List(Value("float32"), length=8)})
        ds = Dataset.from_dict({"doc_id": [f"d{i}" for i in range(6)], "embedding": emb.tolist()}, features=features)
        ds.push_to_hub("tester/cache")

        shutil.rmtree(os.environ["HF_HOME"])
        back = load_dataset("tester/cache", split="train")
        assert back.features == features, back.features
        assert back["doc_id"] == [f"d{i}" for i in range(6)]
        got = np.asarray(back.with_format("numpy")["embedding"], dtype="float32")
        assert got.shape == (6, 8) and np.array_equal(got, emb)
        print("OK")
    """
    proc = run_with_hub(code, fake_hub.url, tmp_path)
    assert proc.stdout.strip().endswith("OK")
    files = fake_hub.files("tester/cache", repo_type="dataset")
    assert "README.md" in files and any(p.endswith(".parquet") for p in files), sorted(files)
    _assert_known_routes_only(fake_hub)


def test_model_card_round_trip_and_error_codes(fake_hub, tmp_path):  # noqa: F811
    code = """
        from huggingface_hub import HfApi, ModelCard, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

        api = HfApi()
        api.create_repo("tester/card-repo")
        readme = "---\\nlicense: mit\\ntags:\\n- retrieval\\n- corrector\\n---\\n# Card\\nBody text.\\n"
        api.upload_file(path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="tester/card-repo")

        card = ModelCard.load("tester/card-repo")
        assert card.data.license == "mit" and card.data.tags == ["retrieval", "corrector"], card.data
        assert "Body text." in card.text

        from huggingface_hub import HfFileSystem  # ranged reads (HTTP Range -> 206)
        with HfFileSystem().open("tester/card-repo/README.md", "rb", block_size=8) as f:
            f.seek(4)
            assert f.read(7) == b"license"

        card.data.tags.append("updated")
        card.push_to_hub("tester/card-repo")
        assert ModelCard.load("tester/card-repo").data.tags[-1] == "updated"

        try:
            hf_hub_download("tester/card-repo", "missing.json")
            raise SystemExit("expected EntryNotFoundError")
        except EntryNotFoundError:
            pass
        try:
            hf_hub_download("tester/no-such-repo", "config.json")
            raise SystemExit("expected RepositoryNotFoundError")
        except RepositoryNotFoundError:
            pass
        assert [c.title for c in api.list_repo_commits("tester/card-repo")][-1] == "initial commit"
        print("OK")
    """
    proc = run_with_hub(code, fake_hub.url, tmp_path)
    assert proc.stdout.strip().endswith("OK")
    assert "tags:\n- retrieval\n- corrector\n- updated" in fake_hub.files("tester/card-repo")["README.md"].decode()
    _assert_known_routes_only(fake_hub)


def test_trainer_push_to_hub_with_checkpoint_strategy(fake_hub, tmp_path):  # noqa: F811
    code = """
        import torch
        from huggingface_hub import ModelCard, list_repo_files
        from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

        torch.manual_seed(0)
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, vocab_size=100)

        class Toy(torch.utils.data.Dataset):
            def __len__(self):
                return 8
            def __getitem__(self, i):
                return {"input_ids": torch.tensor([1, 2 + i, 3]), "labels": torch.tensor(i % 2)}

        args = TrainingArguments(output_dir="out", max_steps=2, per_device_train_batch_size=4, save_steps=1,
                                 push_to_hub=True, hub_model_id="tiny-trainer", hub_strategy="checkpoint",
                                 report_to=[], use_cpu=True)
        trainer = Trainer(model=BertForSequenceClassification(cfg), args=args, train_dataset=Toy())
        trainer.train()
        trainer.push_to_hub(commit_message="end of training")

        files = set(list_repo_files("tester/tiny-trainer"))  # no namespace given: whoami -> "tester"
        assert {"README.md", "config.json", "model.safetensors", "last-checkpoint/model.safetensors"} <= files, files
        assert "generated_from_trainer" in ModelCard.load("tester/tiny-trainer").data.tags
        print("OK")
    """
    proc = run_with_hub(code, fake_hub.url, tmp_path)
    assert proc.stdout.strip().endswith("OK")
    _assert_known_routes_only(fake_hub)


def test_unknown_routes_are_recorded(fake_hub):  # noqa: F811
    try:
        urllib.request.urlopen(f"{fake_hub.url}/api/not-a-route")
        raise AssertionError("expected a 404")
    except urllib.error.HTTPError as err:
        assert err.code == 404
        assert "no route" in json.loads(err.read())["error"]
    assert fake_hub.unknown_routes == ["GET /api/not-a-route"]
