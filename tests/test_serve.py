"""`rmtrain serve` as a real process on a loopback port, driven by a real HTTP client (urllib).

The model is a tiny Llama with a random value head, converted with --fp32; the server runs with an
API key (from RMTRAIN_API_KEY) and small limits so that each refusal can be provoked.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from recipe_variants import recipe_variant
from rmtrain.builder import build
from rmtrain.config import load_config
from rmtrain.data import build_demo_preference_data
from rmtrain.evaluation import evaluate_reward_model

pytestmark = pytest.mark.slow  # starts a server process

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMITS = {"max_batch_size": 8, "max_queue": 200, "max_request_items": 256, "max_request_bytes": 200_000}
TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]


def request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 60):
    """(status, decoded JSON body) of one HTTP request; `body` is bytes, or an object sent as JSON."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """{'folder', 'data', 'records'}: a converted tiny model and 24 demo pairs."""
    from rmtrain.convert import convert_pth_to_hf

    folder = tmp_path_factory.mktemp("serve")
    config = recipe_variant(folder, "tiny", replacements=TINY_MODEL, num_pairs=64)
    torch.manual_seed(0)
    reward_model = build(load_config(str(config)).model)
    torch.nn.init.normal_(reward_model.v_head.weight, std=1.0)
    checkpoint = folder / "iter_1.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": reward_model.state_dict()}, checkpoint)
    convert_pth_to_hf(str(config), str(checkpoint), str(folder / "hf"), fp32=True)
    records = list(build_demo_preference_data(num_pairs=24, seed=5))
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    return {"folder": folder / "hf", "data": data, "records": records}


@pytest.fixture(scope="module")
def server(model):
    """The port of a running `rmtrain serve` on the model; stopped (SIGINT) and checked at the end."""
    port = free_loopback_port()
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in LIMITS.items()]
    env = {**os.environ, "RMTRAIN_API_KEY": API_KEY}
    command = [sys.executable, "-m", "rmtrain.cli", "serve", str(model["folder"]), "--port", str(port), *flags]
    log = open(model["folder"].parent / "serve.log", "w+")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, f"the server exited: {log.seek(0) or log.read()[-3000:]}"
        assert time.monotonic() < deadline, "the server did not answer /health within 180 s"
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    yield port
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    log.close()


def _conversations(records, side: str) -> list[list[dict]]:
    return [record["prompt"] + record[side] for record in records]


def test_scores_equal_rmtrain_eval_per_pair_scores(model, server, tmp_path):
    from transformers import AutoTokenizer

    summary = evaluate_reward_model(str(model["folder"]), str(model["data"]), out=str(tmp_path / "eval.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [row["record_index"] for row in rows] == list(range(len(model["records"])))
    chosen, rejected = [row["chosen_score"] for row in rows], [row["rejected_score"] for row in rows]

    for side, expected in (("chosen", chosen), ("rejected", rejected)):
        status, body = request(
            server, "POST", "/score", {"conversations": _conversations(model["records"], side)}, AUTH
        )
        assert status == 200, body
        assert body["scores"] == pytest.approx(expected, abs=1e-5) and body["normalized"] is False
        assert body["truncated"] == []

    # OpenRLHF's contract: texts already rendered with the folder's chat template (which writes the reward token).
    tokenizer = AutoTokenizer.from_pretrained(model["folder"])
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in _conversations(model["records"], "chosen")]
    status, body = request(server, "POST", "/get_reward", {"query": texts, "prompts": texts, "labels": None}, AUTH)
    assert status == 200, body
    assert body["rewards"] == pytest.approx(chosen, abs=1e-5) and body["scores"] == body["rewards"]

    # Normalised on request, with the statistics convert measured on the config's validation split.
    config = json.loads((model["folder"] / "config.json").read_text())
    status, body = request(server, "POST", "/get_reward", {"query": texts[:3], "normalize": True}, AUTH)
    assert status == 200 and body["normalized"] is True
    assert body["rewards"] == pytest.approx([(s - config["mean"]) / config["std"] for s in chosen[:3]], abs=1e-4)
    assert summary["pairs"] == len(rows)


def test_a_bad_input_barrage_gets_4xx_naming_the_field_and_the_server_keeps_serving(model, server):
    good = [model["records"][0]["prompt"] + model["records"][0]["chosen"]]
    long_text = "word " * 400
    cases = [
        ("POST", "/get_reward", b'{"query": [', AUTH, 400, "body"),
        ("POST", "/get_reward", b"[1, 2]", AUTH, 422, "body"),
        ("POST", "/get_reward", {"queries": ["a"]}, AUTH, 422, "query"),
        ("POST", "/get_reward", {"query": "a single string"}, AUTH, 422, "query"),
        ("POST", "/get_reward", {"query": []}, AUTH, 422, "query"),
        ("POST", "/get_reward", {"query": ["fine", 7]}, AUTH, 422, "query[1]"),
        ("POST", "/get_reward", {"query": [""]}, AUTH, 422, "query[0]"),
        ("POST", "/get_reward", {"query": [long_text]}, AUTH, 413, "query[0]"),
        ("POST", "/get_reward", {"query": ["a"] * 257}, AUTH, 413, "query"),
        ("POST", "/get_reward", {"query": ["x" * 1000] * 250}, AUTH, 413, "body"),
        ("POST", "/get_reward", {"query": ["a"], "normalize": "yes"}, AUTH, 422, "normalize"),
        ("POST", "/score", {"conversations": [[]]}, AUTH, 422, "conversations[0]"),
        ("POST", "/score", {"conversations": [["hello"]]}, AUTH, 422, "conversations[0][0]"),
        ("POST", "/score", {"conversations": [[{"role": "user", "content": 3}]]}, AUTH, 422, "conversations[0][0].content"),
        ("POST", "/score", {"conversations": [[{"content": "hi"}]]}, AUTH, 422, "conversations[0][0].role"),
        ("POST", "/score", {"conversations": good * 201}, AUTH, 503, None),  # more than the queue holds
        ("POST", "/score", {"conversations": good}, {}, 401, "Authorization"),
        ("POST", "/score", {"conversations": good}, {"Authorization": "Bearer wrong"}, 401, "Authorization"),
        ("GET", "/score", None, AUTH, 405, None),
        ("GET", "/no-such-endpoint", None, AUTH, 404, None),
    ]  # fmt: skip
    for method, path, body, headers, status, field in cases:
        got_status, got = request(server, method, path, body, headers)
        assert (got_status, got.get("field")) == (status, field), (path, body if len(str(body)) < 200 else "...", got)
        assert isinstance(got["error"], str) and got["error"]
        assert request(server, "GET", "/health")[0] == 200  # still serving
    status, body = request(server, "POST", "/score", {"conversations": good}, AUTH)
    assert status == 200 and len(body["scores"]) == 1


def test_32_concurrent_clients_get_every_answer_right(model, server):
    conversations = _conversations(model["records"], "chosen") + _conversations(model["records"], "rejected")
    status, body = request(server, "POST", "/score", {"conversations": conversations}, AUTH)
    assert status == 200
    expected = body["scores"]
    requests_per_client, failures, answered = 6, [], []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(requests_per_client):
            picked = rng.sample(range(len(conversations)), rng.randint(1, 4))
            status, body = request(
                server, "POST", "/score", {"conversations": [conversations[i] for i in picked]}, AUTH
            )
            if status != 200:
                failures.append((status, body))
            elif body["scores"] != pytest.approx([expected[i] for i in picked], abs=1e-5):
                failures.append(("wrong scores", picked, body["scores"]))
            else:
                answered.append(len(picked))

    before = request(server, "GET", "/health")[1]["scored_sequences"]
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(answered) == 32 * requests_per_client  # no request lost
    health = request(server, "GET", "/health")[1]
    assert health["scored_sequences"] - before == sum(answered) and health["queued"] == 0
