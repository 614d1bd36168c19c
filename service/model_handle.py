"""The served model: one loaded `Runtime` behind its three micro-batching queues.

`ModelHandle` wraps a runtime with the queues "image" (image embeddings and image heads), "text"
(text embeddings and text heads) and "pair" (VQA, ITM and pair heads), and gives the routers an
async API over them (`run`, `run_texts`, `embed_texts`, `embed_images`). It counts the requests
that pinned it, so that a retired handle (service/engine.py swaps them) closes its runtime only
after the last one is done.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batching import BatchQueue, QueueFull, WorkerDead
from service.errors import APIError, bad_request, unavailable
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("momo.service.engine")


class TextTooLong(ValueError):
    """A text over the model's token limit, with text_overflow=error (the router makes it a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the text exceeds the model's limit of {limit} tokens")


@dataclass(frozen=True)
class TokenRow:
    """A tokenised text (the text queue's prepared item)."""

    ids: np.ndarray  # (L,) int64, real tokens only
    truncated: bool


@dataclass(frozen=True)
class TextResult:
    output: np.ndarray  # the op's output row: an embedding (E,) or a head's logits (n_labels,)
    tokens: int
    truncated: bool


@dataclass
class TextOutputs:
    """The outputs for a request's texts, in order, with what `usage` reports."""

    outputs: np.ndarray  # (n, E) or (n, n_labels)
    num_tokens: list[int]
    truncated: list[int]  # indexes of the texts cut to the model's limit

    @property
    def vectors(self) -> np.ndarray:
        return self.outputs

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


@dataclass(frozen=True)
class _PairBatch:
    pixels: np.ndarray  # (B, C, H, W)
    ids: np.ndarray  # (B, L)
    mask: np.ndarray  # (B, L)
    top_k: list[int]


def _row_length(row: TokenRow) -> int:
    return len(row.ids)


def _text_result(op: str, row: TokenRow, output: np.ndarray) -> TextResult:
    return TextResult(output, len(row.ids), row.truncated)


def _stack(op: str, arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays)


@dataclass(frozen=True)
class PairPayload:
    pixels: np.ndarray  # (C, H, W)
    ids: np.ndarray  # (L,) int64, real tokens only
    top_k: int = 1


class ModelHandle:
    def __init__(
        self,
        runtime: Any,
        settings: Settings,
        metrics: Metrics | None = None,
        kind: str | None = None,
        tracer: Any = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics = metrics
        artifact = runtime.artifact
        self.artifact = artifact
        self.config = artifact.config
        self.tokenizer = artifact.tokenizer
        self.name = str(artifact.manifest.name)
        self.version = str(artifact.manifest.version)
        self.reference = f"{self.name}:{self.version}"
        self.dim = int(artifact.config.embed_dim)
        self.heads = dict(artifact.heads.heads)
        self.temperature = float(artifact.heads.temperature)
        self.kind = kind or str(runtime.kind)
        self.runtime_choice: dict[str, Any] | None = None  # runtime=auto: what was measured
        self.device = str(runtime.device)
        self.loaded_at = time.time()
        self.label_cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._inflight = 0
        self._counter_lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        on_batch = metrics.observe_batch if metrics is not None else None
        common: dict[str, Any] = {
            "max_batch": settings.effective_max_batch,
            "max_wait_s": settings.max_wait_ms / 1000.0,
            "capacity": settings.queue_size,
            "on_batch": on_batch,
            "in_flight": self._in_flight_count,
            "tracer": tracer,
        }
        self.queues = {
            # texts are tokenised in the queue's pre stage (one batch call) and batched by tokens
            "text": BatchQueue(
                "text",
                self._process_text,
                prepare=self._prepare_texts,
                cost=_row_length,
                collate=self._collate_texts,
                finish=_text_result,
                max_batch_tokens=settings.max_batch_tokens,
                **common,
            ),
            "image": BatchQueue("image", self._process_image, collate=_stack, **common),
            "pair": BatchQueue("pair", self._process_pair, collate=self._collate_pairs, **common),
        }

    def start(self) -> None:
        for queue in self.queues.values():
            queue.start()

    # --- request accounting -------------------------------------------------------------------------
    def _enter(self) -> None:
        with self._counter_lock:
            self._inflight += 1
            self._idle.clear()

    def _leave(self) -> None:
        with self._counter_lock:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    def _in_flight_count(self) -> int:
        return self._inflight

    @property
    def alive(self) -> bool:
        return all(q.alive for q in self.queues.values())

    def retire(self, timeout: float) -> None:
        """Blocking: wait for the last request on this handle, drain the queues, close the runtime."""
        if not self._idle.wait(timeout):
            log.warning(
                "model %s still has %d requests after %.0fs; closing anyway",
                self.reference,
                self._inflight,
                timeout,
            )
        for queue in self.queues.values():
            queue.stop(timeout)
        with contextlib.suppress(Exception):
            self.runtime.close()
        log.info("model %s unloaded", self.reference)

    # --- the batched operations (stage threads) ---------------------------------------------------
    def _pad(self, rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        length = max(1, *(len(r) for r in rows))
        ids = np.full((len(rows), length), self.tokenizer.pad_id, dtype=np.int64)  # (B, L)
        mask = np.zeros((len(rows), length), dtype=np.int64)  # (B, L)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def _prepare_texts(self, op: str, texts: list[str]) -> list[TokenRow | TextTooLong]:
        """Pre stage: one tokenizer batch call (Rust, outside the GIL) for every text queued."""
        batch = self.tokenizer.encode_batch(texts, max_length=self.config.max_text_len)
        refuse = self.settings.text_overflow == "error"
        limit = int(self.config.max_text_len)
        out: list[TokenRow | TextTooLong] = []
        for i, n in enumerate(batch.num_tokens):
            if refuse and batch.truncated[i]:
                out.append(TextTooLong(limit))
            else:
                out.append(TokenRow(batch.input_ids[i, :n].copy(), bool(batch.truncated[i])))
        return out

    def _collate_texts(self, op: str, rows: list[TokenRow]) -> tuple[np.ndarray, np.ndarray]:
        return self._pad([row.ids for row in rows])

    def _process_text(self, op: str, inputs: tuple[np.ndarray, np.ndarray]) -> Sequence[Any]:
        ids, mask = inputs
        if op == "embed":
            return list(self.runtime.encode_texts(ids, mask))
        if op.startswith("head:"):
            return list(self.runtime.head_logits(op[5:], input_ids=ids, attention_mask=mask))
        raise ValueError(f"unknown text op {op!r}")

    def _process_image(self, op: str, pixels: np.ndarray) -> Sequence[Any]:
        if op == "embed":
            return list(self.runtime.encode_images(pixels))
        if op.startswith("head:"):
            return list(self.runtime.head_logits(op[5:], pixels=pixels))
        raise ValueError(f"unknown image op {op!r}")

    def _collate_pairs(self, op: str, payloads: list[PairPayload]) -> _PairBatch:
        ids, mask = self._pad([p.ids for p in payloads])
        return _PairBatch(np.stack([p.pixels for p in payloads]), ids, mask, [p.top_k for p in payloads])

    def _process_pair(self, op: str, batch: _PairBatch) -> Sequence[Any]:
        pixels, ids, mask = batch.pixels, batch.ids, batch.mask
        if op == "vqa":
            answers = self.runtime.answer(pixels, ids, mask, top_k=max(batch.top_k))
            return [a[:k] for a, k in zip(answers, batch.top_k, strict=True)]
        if op == "itm":
            return list(self.runtime.score_pairs(pixels, ids, mask))
        if op.startswith("head:"):
            return list(self.runtime.head_logits(op[5:], pixels=pixels, input_ids=ids, attention_mask=mask))
        raise ValueError(f"unknown pair op {op!r}")

    # --- async API for routers ---------------------------------------------------------------------
    async def run(
        self, queue: str, op: str, payloads: Sequence[Any], params: Sequence[str] | None = None
    ) -> list[Any]:
        """Results of `op` for each payload, in order. An input the model refuses (a text over its
        token limit with text_overflow=error) is a 400 naming it (`params[i]`)."""
        try:
            results = await self.queues[queue].run(
                op, payloads, self.settings.request_timeout_s, return_exceptions=True
            )
        except QueueFull as exc:
            if self.metrics is not None:
                self.metrics.queue_rejections.labels(queue).inc()
            raise APIError(
                429,
                f"the server is busy ({exc.queue} queue full); retry later",
                "queue_full",
                headers={"Retry-After": str(max(1, round(exc.retry_after_s)))},
            ) from exc
        except TimeoutError as exc:
            raise unavailable(
                f"inference did not finish within {self.settings.request_timeout_s:g}s",
                "inference_timeout",
                retry_after=5,
            ) from exc
        except WorkerDead as exc:
            raise unavailable(str(exc), "worker_unavailable", retry_after=5) from exc
        failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        if not failed:
            return results
        too_long = [i for i in failed if isinstance(results[i], TextTooLong)]
        if too_long:
            names = [params[i] if params else f"input[{i}]" for i in too_long]
            raise bad_request(
                f"{', '.join(names[:5])} exceed(s) the model's limit of {self.config.max_text_len} tokens "
                "(this server refuses over-long texts instead of truncating them)",
                "text_too_long",
                names[0],
            )
        error = results[failed[0]]
        if isinstance(error, WorkerDead):
            raise unavailable(str(error), "worker_unavailable", retry_after=5) from error
        raise error

    async def run_texts(
        self, op: str, texts: Sequence[str], params: Sequence[str] | None = None
    ) -> TextOutputs:
        """`op` over texts (tokenised in the queue), with the token counts for `usage`."""
        if not texts:
            return TextOutputs(np.zeros((0, self.dim), np.float32), [], [])
        results: list[TextResult] = await self.run("text", op, texts, params)
        return TextOutputs(
            np.stack([r.output for r in results]),
            [r.tokens for r in results],
            [i for i, r in enumerate(results) if r.truncated],
        )

    async def embed_texts(self, texts: Sequence[str], params: Sequence[str] | None = None) -> TextOutputs:
        return await self.run_texts("embed", texts, params)

    async def embed_images(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        results = await self.run("image", "embed", pixels)
        return np.stack(results) if results else np.zeros((0, self.dim), np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "reference": self.reference,
            "runtime": self.kind,
            "runtime_selection": self.runtime_choice,
            "device": self.device,
            "embedding_dim": self.dim,
            "loaded_at": int(self.loaded_at),
        }
