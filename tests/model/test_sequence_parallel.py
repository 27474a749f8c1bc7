"""Sequence parallelism on CPU (gloo): processes that split each row compute what one process computes.

Each case (Llama / InternLM2 trunk, packed / padded batch) is scored and back-propagated in one
process on the whole global batch, and by 2 processes (SP=2) and 4 processes (SP=2 x DP=2, each
data-parallel group on its half of the batch) started with torch.multiprocessing. The ranks' gradients
are averaged over the world, as DDP and DeepSpeed do. Per-pair scores, loss and gradients must agree
within 1e-5 (fp32). Row lengths are odd, so the rows are filled up to a multiple of SP.
"""

import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaModel

from rmtrain.data.collate import preference_collate_fn
from rmtrain.engine.launch import free_port
from rmtrain.model.internlm2 import InternLM2Config, InternLM2Model
from rmtrain.model.reward_model import RewardModel
from rmtrain.parallel import init_sequence_parallel, sequence_parallel_rank

REWARD = 3
TOL = 1e-5
PAIRS = 4
CASES = [(family, packed) for family in ("llama", "internlm2") for packed in (False, True)]
SHAPE = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _pairs() -> list[dict]:
    rng = random.Random(7)

    def sequence():
        return [1] + [rng.randrange(4, 256) for _ in range(rng.randrange(6, 30))] + [REWARD]

    return [{"chosen_ids": sequence(), "rejected_ids": sequence()} for _ in range(PAIRS)]


def _instances(pairs: list[dict], packed: bool) -> list:
    """Padded: the pairs. Packed: bins of 2 pairs (a data-parallel group takes whole bins)."""
    return [pairs[i : i + 2] for i in range(0, len(pairs), 2)] if packed else pairs


def _model(family: str, packed: bool) -> RewardModel:
    torch.manual_seed(0)
    if family == "llama":
        trunk = LlamaModel(LlamaConfig(**SHAPE))
    else:
        trunk = InternLM2Model(InternLM2Config(**SHAPE, bias=False))
    model = RewardModel(llm=trunk, reward_token_id=REWARD, use_varlen_attn=packed, use_activation_checkpointing=True)
    return model.float().train()  # activation checkpointing recomputes (and re-exchanges) in backward


def _run(family: str, packed: bool, instances: list) -> dict:
    """Scores [sequences], loss and every parameter's gradient of one forward/backward on `instances`."""
    model = _model(family, packed)
    data = preference_collate_fn(instances)["data"]
    with torch.no_grad():
        scores = model.score(data)
    loss = model(data, mode="loss")["loss"]
    loss.backward()
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
    return {"scores": scores, "loss": loss.detach(), "grads": grads}


def _worker(rank: int, world: int, sp: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    init_sequence_parallel(sp)
    dp_rank, dp_size = rank // sp, world // sp
    results = {}
    for family, packed in CASES:
        instances = _instances(_pairs(), packed)
        shard = len(instances) // dp_size
        result = _run(family, packed, instances[dp_rank * shard : (dp_rank + 1) * shard])
        for grad in result["grads"].values():  # what DDP does: the average over all ranks
            dist.all_reduce(grad)
            grad /= world
        dist.all_reduce(result["loss"])
        result["loss"] /= world
        results[family, packed] = result
    results["sequence_parallel_rank"] = sequence_parallel_rank()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _spawn(tmp_path, world: int, sp: int) -> list[dict]:
    mp.spawn(_worker, args=(world, sp, free_port(), str(tmp_path)), nprocs=world)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


@pytest.fixture(scope="module")
def reference():
    return {case: _run(*case, _instances(_pairs(), case[1])) for case in CASES}


def _pair_scores(scores: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """[chosen of pairs first..first+count, their rejected] from scores ordered as the collate orders them."""
    half = scores.shape[0] // 2
    return torch.cat([scores[first : first + count], scores[half + first : half + first + count]])


def _check(reference: dict, results: list[dict], sp: int) -> None:
    world = len(results)
    dp_size = world // sp
    assert [result["sequence_parallel_rank"] for result in results] == [rank % sp for rank in range(world)]
    for case in CASES:
        expected = reference[case]
        for rank, result in enumerate(results):
            got = result[case]
            count = PAIRS // dp_size
            want = _pair_scores(expected["scores"], (rank // sp) * count, count)
            assert torch.allclose(got["scores"], want, atol=TOL, rtol=0), (case, rank, got["scores"], want)
            assert abs(got["loss"].item() - expected["loss"].item()) < TOL, (case, rank)
            for name, grad in expected["grads"].items():
                diff = (got["grads"][name] - grad).abs().max().item()
                assert diff < TOL, (case, rank, name, diff)
        assert any(grad.abs().max() > 1e-3 for grad in expected["grads"].values())  # a real gradient


@pytest.mark.slow
def test_two_sequence_parallel_ranks_match_one_process(tmp_path, reference):
    _check(reference, _spawn(tmp_path, world=2, sp=2), sp=2)


@pytest.mark.slow
def test_two_data_parallel_groups_of_two_match_one_process(tmp_path, reference):
    _check(reference, _spawn(tmp_path, world=4, sp=2), sp=2)


def test_rows_split_only_inside_a_process_group():
    init_sequence_parallel(2)  # no process group: nothing is split
    assert sequence_parallel_rank() == 0
    model = _model("llama", packed=True)
    assert not model.sequence_parallel
