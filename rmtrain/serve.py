"""`rmtrain serve`: an HTTP reward server for PPO loops and batch scoring.

The model is a folder from `rmtrain convert pth_to_hf` or a training checkpoint with its config,
loaded by `rmtrain eval`'s code (`rmtrain.evaluation.models.RewardModelSource`) and scored by the
shared rule (`rmtrain.scoring`), so a conversation gets the score `rmtrain eval` gives it.

Endpoints (JSON in, JSON out):
- `GET /health`: the model and the server's limits.
- `POST /get_reward` (OpenRLHF's contract): `{"query": [text, ...]}` -> `{"rewards": [...], "scores": [...]}`.
  Each text is a chat already rendered with the chat template (as PPO trainers send it); it is
  tokenised without special tokens and ends with the reward token (appended unless already last).
  Other fields (`prompts`, `labels`) are ignored. A text over `max_length` tokens is refused.
- `POST /score`: `{"conversations": [[{"role": ..., "content": ...}, ...], ...]}` -> `{"scores": [...]}`:
  each conversation rendered with the model's template and truncated as in training (prompt first,
  from the left); `truncated` lists the ones that were cut.
- Both take `"normalize": true|false` (default: `--normalize`): `(score - mean) / std` with the
  statistics in the folder's config.json (`rmtrain.normalization`).

Requests are tokenised as they arrive and queued; one scoring thread takes what is queued once
`max_batch_size` sequences wait or the oldest has waited `max_wait_ms`, sorts it by length, and
scores it in padded batches of at most `max_batch_size`. A full queue answers 503; bad input
answers 400 (not JSON), 413 (too large, too many items, too long) or 422 (wrong shape), each as
`{"error": ..., "field": ...}`; 401 without the API key when one is set.
"""

import asyncio
import hmac
import json
import threading
import time
from collections import deque
from dataclasses import dataclass

from mmengine.logging import print_log

from rmtrain.errors import ConfigError
from rmtrain.evaluation.models import RewardModelSource, default_device_and_dtype
from rmtrain.normalization import ScoreNormalization, read_normalization, require_normalization
from rmtrain.scoring import (
    encode_conversation,
    encode_reference_sequence,
    encode_text,
    length_sorted_batches,
    resolve_chat_template,
    score_batch,
)

API_KEY_ENV = "RMTRAIN_API_KEY"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeLimits:
    max_batch_size: int = 32  # sequences per forward pass
    max_wait_ms: float = 5.0  # how long the first queued sequence waits for others to join its batch
    max_queue: int = 1024  # sequences queued or being scored; more are refused with 503
    max_request_items: int = 256  # texts or conversations in one request
    max_request_bytes: int = 16 * 1024 * 1024  # request body size

    def check(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_request_items", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must be at least 0, got {self.max_wait_ms}")


class RequestError(Exception):
    """A request the server refuses: HTTP status, the field at fault (None: the whole request), a message."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


# ---- the model -----------------------------------------------------------------------------------


class RewardScorer:
    """The model and its encoding: requests -> token ids (validated), token ids -> scores."""

    def __init__(
        self,
        model: str,
        config: str | None,
        max_length: int | None,
        normalize: bool,
        trust_remote_code: bool = False,
        trust_checkpoint: bool = False,
    ):
        source = RewardModelSource(model, config, trust_remote_code, trust_checkpoint)
        encoding = source.encoding(max_length)
        self.model = model
        self.tokenizer = encoding.tokenizer
        self.reward_token_id = encoding.reward_token_id
        # Reference-conditioned (POLAR) models score a response against a reference, with no chat template.
        self.max_response_length = encoding.max_response_length
        self.chat_template = (
            None
            if self.max_response_length is not None
            else resolve_chat_template(self.tokenizer, encoding.chat_template)
        )
        self.max_length = max_length or encoding.max_length
        self.max_length_from = "--max-length" if max_length else encoding.max_length_from
        if self.max_length < 8:
            raise ConfigError(f"--max-length must be at least 8, got {self.max_length}")
        # Statistics live in a converted folder's config.json; a checkpoint has none.
        self.normalization: ScoreNormalization | None = None if source.is_checkpoint else read_normalization(model)
        if normalize:
            if source.is_checkpoint:
                raise ConfigError("--normalize needs a folder from `rmtrain convert pth_to_hf` (its config.json stats)")
            self.normalization = require_normalization(model)
        self.normalize_by_default = normalize
        self.device, dtype = default_device_and_dtype()
        self.trunk, self.value_head, self.model_class = source.score_modules(self.device, dtype)
        self.dtype = str(dtype).removeprefix("torch.")
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else 0  # masked: any valid id works

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        sequences = []
        for index, text in enumerate(texts):
            ids = encode_text(self.tokenizer, text, self.reward_token_id)
            if len(ids) > self.max_length:
                raise RequestError(
                    413,
                    f"query[{index}]",
                    f"the text is {len(ids)} tokens, more than this server's max_length {self.max_length} "
                    f"({self.max_length_from}); start the server with a larger --max-length, or send "
                    "conversations to /score, which cuts the prompt as training did",
                )
            sequences.append(ids)
        return sequences

    def encode_conversations(
        self, conversations: list[list[dict]], references: list[str] | None = None
    ) -> tuple[list[list[int]], list[int]]:
        """(token ids, indices of the conversations that were cut to max_length).

        A reference-conditioned model needs one reference answer per conversation (the last message
        is the candidate); a chat model takes none.
        """
        if self.max_response_length is not None and references is None:
            raise RequestError(
                422, "references", "this is a reference-conditioned model: send one reference answer per conversation"
            )
        if self.max_response_length is None and references is not None:
            raise RequestError(422, "references", "this model is not reference-conditioned: send conversations only")
        sequences, truncated = [], []
        for index, messages in enumerate(conversations):
            if references is not None:
                encoded = encode_reference_sequence(
                    self.tokenizer, messages[:-1], references[index], messages[-1:], self.max_length,
                    self.reward_token_id, self.max_response_length,
                )  # fmt: skip
                cut = encoded.prompt_tokens_cut or encoded.reference_tokens_cut or encoded.response_tokens_cut
            else:
                encoded = encode_conversation(
                    self.tokenizer, messages[:-1], messages[-1:], self.max_length, self.reward_token_id,
                    self.chat_template,
                )  # fmt: skip
                cut = encoded.prompt_tokens_cut or encoded.response_tokens_cut
            sequences.append(encoded.input_ids)
            if cut:
                truncated.append(index)
        return sequences, truncated

    def score(self, sequences: list[list[int]]) -> list[float]:
        return score_batch(self.trunk, self.value_head, sequences, self.pad_token_id, self.device)

    def wants_normalized(self, normalize: bool | None) -> bool:
        """Whether to normalise (the request's choice, else the server's default); checked before scoring."""
        normalize = self.normalize_by_default if normalize is None else normalize
        if normalize and self.normalization is None:
            raise RequestError(
                422,
                "normalize",
                f"this model has no normalisation statistics (mean, std in {self.model}/config.json); "
                f"measure them with `rmtrain eval {self.model} DATA --write-stats`",
            )
        return normalize

    def finish(self, scores: list[float], normalize: bool) -> list[float]:
        return self.normalization.apply(scores) if normalize else scores


# ---- dynamic batching ----------------------------------------------------------------------------


class QueueFull(Exception):
    pass


class _Request:
    """One HTTP request's sequences: results filled in by the scoring thread, then its future resolved."""

    def __init__(self, loop, future, size: int):
        self.loop, self.future = loop, future
        self.results = [0.0] * size
        self.remaining = size
        self.failed = False

    def resolve(self) -> None:
        self.loop.call_soon_threadsafe(_set_future, self.future, self.results, None)

    def fail(self, error: Exception) -> None:
        if not self.failed:
            self.failed = True
            self.loop.call_soon_threadsafe(_set_future, self.future, None, error)


def _set_future(future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """A bounded queue of sequences and one thread that scores them in length-sorted batches."""

    def __init__(self, score, limits: ServeLimits):
        self._score = score
        self._limits = limits
        self._pending: deque = deque()  # (request, index in request, token ids, time queued)
        self._queued = 0  # sequences queued or being scored
        self._condition = threading.Condition()
        self.scored_sequences = 0
        self._thread = threading.Thread(target=self._run, name="rmtrain-scorer", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, sequences: list[list[int]]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        request = _Request(loop, loop.create_future(), len(sequences))
        now = time.monotonic()
        with self._condition:
            if self._queued + len(sequences) > self._limits.max_queue:
                raise QueueFull(self._queued)
            self._queued += len(sequences)
            self._pending.extend((request, index, ids, now) for index, ids in enumerate(sequences))
            self._condition.notify()
        return request.future

    def _take(self) -> list:
        """Wait for work; return everything queued once a batch is full or the oldest waited max_wait_ms."""
        with self._condition:
            while not self._pending:
                self._condition.wait()
            deadline = self._pending[0][3] + self._limits.max_wait_ms / 1000
            while len(self._pending) < self._limits.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._condition.wait(left)
            taken = list(self._pending)
            self._pending.clear()
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            for batch in length_sorted_batches([len(item[2]) for item in taken], self._limits.max_batch_size):
                items = [taken[i] for i in batch]
                try:
                    scores = self._score([ids for _, _, ids, _ in items])
                except Exception as error:  # a failed batch fails its requests; the server keeps serving
                    for request, _, _, _ in items:
                        request.fail(error)
                    scores = None
                with self._condition:
                    self._queued -= len(items)
                    self.scored_sequences += len(items) if scores is not None else 0
                if scores is None:
                    continue
                for (request, index, _, _), score in zip(items, scores):
                    request.results[index] = score
                    request.remaining -= 1
                    if request.remaining == 0 and not request.failed:
                        request.resolve()


# ---- request bodies ------------------------------------------------------------------------------


def _list_field(body: dict, name: str, limit: int) -> list:
    if name not in body:
        raise RequestError(422, name, f'missing: send {{"{name}": [...]}}')
    value = body[name]
    if not isinstance(value, list):
        raise RequestError(422, name, f"expected a list, got {type(value).__name__}")
    if not value:
        raise RequestError(422, name, "the list is empty")
    if len(value) > limit:
        raise RequestError(413, name, f"{len(value)} items, more than this server's --max-request-items {limit}")
    return value


def _normalize_field(body: dict) -> bool | None:
    value = body.get("normalize")
    if value is not None and not isinstance(value, bool):
        raise RequestError(422, "normalize", f"expected true or false, got {json.dumps(value)}")
    return value


def parse_texts(body: dict, limit: int) -> list[str]:
    texts = _list_field(body, "query", limit)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"query[{index}]", f"expected a string, got {type(text).__name__}")
        if not text:
            raise RequestError(422, f"query[{index}]", "the text is empty")
    return texts


def parse_conversations(body: dict, limit: int) -> list[list[dict]]:
    conversations = _list_field(body, "conversations", limit)
    for index, messages in enumerate(conversations):
        where = f"conversations[{index}]"
        if not isinstance(messages, list) or not messages:
            got = "an empty list" if messages == [] else type(messages).__name__
            raise RequestError(422, where, f"expected a non-empty list of messages, got {got}")
        for position, message in enumerate(messages):
            at = f"{where}[{position}]"
            if not isinstance(message, dict):
                raise RequestError(422, at, f"expected a message object, got {type(message).__name__}")
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    got = "missing" if key not in message else type(message[key]).__name__
                    raise RequestError(422, f"{at}.{key}", f"expected a string, got {got}")
            if not message["role"]:
                raise RequestError(422, f"{at}.role", "the role is empty")
    return conversations


def parse_references(body: dict, count: int) -> list[str] | None:
    """The optional `references` field: one reference answer (a string) per conversation."""
    if "references" not in body:
        return None
    references = body["references"]
    if not isinstance(references, list) or len(references) != count:
        got = f"{len(references)} items" if isinstance(references, list) else type(references).__name__
        raise RequestError(422, "references", f"expected a list of {count} strings, one per conversation, got {got}")
    for index, reference in enumerate(references):
        if not isinstance(reference, str) or not reference.strip():
            raise RequestError(422, f"references[{index}]", "expected a non-empty string")
    return references


# ---- the app -------------------------------------------------------------------------------------


def build_app(scorer: RewardScorer, limits: ServeLimits, api_key: str | None):
    """The FastAPI app: the endpoints above, scoring through one Batcher."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    batcher = Batcher(scorer.score, limits)
    app = FastAPI(title="rmtrain reward server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    def error_response(status: int, field: str | None, message: str, headers=None) -> JSONResponse:
        return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def refused(_request, error: RequestError):
        return error_response(error.status, error.field, error.message)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):  # 404, 405: the same body shape as the others
        return error_response(error.status_code, None, str(error.detail))

    def check_api_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[len("Bearer ") :] if header.startswith("Bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "Authorization", "missing or wrong API key (send 'Authorization: Bearer KEY')")

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise RequestError(
                413, "body", f"{declared} bytes, more than --max-request-bytes {limits.max_request_bytes}"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_request_bytes:
                raise RequestError(413, "body", f"more than --max-request-bytes {limits.max_request_bytes} bytes")
        try:
            parsed = json.loads(body)
        except ValueError as error:
            raise RequestError(400, "body", f"not valid JSON: {error}") from error
        if not isinstance(parsed, dict):
            raise RequestError(422, "body", f"expected a JSON object, got {type(parsed).__name__}")
        return parsed

    async def scores_of(sequences: list[list[int]]) -> list[float]:
        try:
            future = batcher.submit(sequences)
        except QueueFull as full:
            raise RequestError(
                503, None, f"the queue is full ({full.args[0]} sequences waiting, --max-queue {limits.max_queue})"
            ) from None
        try:
            return await future
        except Exception as error:
            raise RequestError(500, None, f"scoring failed: {type(error).__name__}: {error}") from error

    @app.get("/health")
    async def health():
        stats = scorer.normalization
        return {
            "status": "ok",
            "model": scorer.model,
            "model_class": scorer.model_class,
            "device": str(scorer.device),
            "dtype": scorer.dtype,
            "reward_token_id": scorer.reward_token_id,
            "max_length": scorer.max_length,
            "normalization": stats.as_dict() if stats is not None else None,
            "normalize_by_default": scorer.normalize_by_default,
            "max_batch_size": limits.max_batch_size,
            "max_request_items": limits.max_request_items,
            "queued": batcher.queued,
            "scored_sequences": batcher.scored_sequences,
        }

    @app.post("/get_reward")
    async def get_reward(request: Request):
        check_api_key(request)
        body = await read_json(request)
        texts = parse_texts(body, limits.max_request_items)
        normalize = scorer.wants_normalized(_normalize_field(body))
        scores = scorer.finish(await scores_of(scorer.encode_texts(texts)), normalize)
        return {"rewards": scores, "scores": scores, "normalized": normalize}

    @app.post("/score")
    async def score(request: Request):
        check_api_key(request)
        body = await read_json(request)
        conversations = parse_conversations(body, limits.max_request_items)
        normalize = scorer.wants_normalized(_normalize_field(body))
        references = parse_references(body, len(conversations))
        sequences, truncated = scorer.encode_conversations(conversations, references)
        scores = scorer.finish(await scores_of(sequences), normalize)
        return {"scores": scores, "normalized": normalize, "truncated": truncated}

    return app


def serve(
    model: str,
    config: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_length: int | None = None,
    api_key: str | None = None,
    normalize: bool = False,
    limits: ServeLimits | None = None,
    trust_remote_code: bool = False,
    trust_checkpoint: bool = False,
) -> None:
    """Load the model and answer requests until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    limits = limits or ServeLimits()
    limits.check()
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    scorer = RewardScorer(model, config, max_length, normalize, trust_remote_code, trust_checkpoint)
    app = build_app(scorer, limits, api_key or None)
    if host not in LOOPBACK_HOSTS and not api_key:
        print_log(
            f"serving on {host} without an API key: anyone who can reach this address can use the model "
            f"(set --api-key or {API_KEY_ENV})",
            logger="current",
        )
    print_log(
        f"rmtrain serve: {scorer.model_class} from {model} ({scorer.dtype} on {scorer.device}), max_length "
        f"{scorer.max_length}, normalisation {'on' if normalize else 'per request' if scorer.normalization else 'none'}; "
        f"http://{host}:{port} (POST /get_reward, POST /score, GET /health)",
        logger="current",
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
