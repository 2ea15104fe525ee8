"""Issue 12 (distributed): several launched processes that do not form one distributed run are refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hf_corrector import ConfigError, CorrectorTrainingArguments
from hf_corrector.training.distributed import check_distributed_setup, launched_world_size


def test_launched_world_size_from_launcher_variables() -> None:
    assert launched_world_size({}) == 1
    assert launched_world_size({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == 2
    assert launched_world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launched_world_size({"WORLD_SIZE": "garbage"}) == 1


def test_one_process_passes(tmp_path, monkeypatch) -> None:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = CorrectorTrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    check_distributed_setup(args.distributed_state)
    check_distributed_setup(args)
    check_distributed_setup(None)


def test_two_launched_processes_without_a_process_group_are_refused() -> None:
    assert not torch.distributed.is_initialized()
    state = SimpleNamespace(num_processes=1, distributed_type=SimpleNamespace(value="NO"))
    env = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "0"}
    with pytest.raises(ConfigError) as err:
        check_distributed_setup(state, environ=env)
    message = str(err.value)
    assert message.startswith("2 processes were launched (WORLD_SIZE=2) but training is not distributed")
    assert "torch.distributed is not initialised" in message and "distributed_type=NO with 1 process(es)" in message
    for fix in ("--use_cpu true", "accelerate launch", "recipes/accelerate/cpu_2proc.yaml", "--multi_gpu"):
        assert fix in message, fix
    # an Accelerator-like object (its .state) and no state at all are judged the same way
    with pytest.raises(ConfigError, match="training is not distributed"):
        check_distributed_setup(SimpleNamespace(state=state), environ=env)
    with pytest.raises(ConfigError, match="training is not distributed"):
        check_distributed_setup(None, environ=env)
