"""The served model: a runtime plus its three micro-batching queues, and hot swapping.

`ModelHandle` wraps one loaded `Runtime` with the queues "image" (image embeddings and image
heads), "text" (text embeddings and text heads) and "pair" (VQA, ITM and pair heads).
`Engine` owns the current handle. A request pins the handle it started with (`Engine.use`), so
an activation never changes the model under a running request: the new runtime is loaded and
warmed up first, the pointer is switched under a lock, and the old handle is retired in the
background once its last request is done (its queues drain, then its runtime is closed).

Memory across swaps: a retired handle is freed as soon as its retirement ends — nothing holds it in a
reference cycle (stopped queues drop their bound methods), because the served model is frozen out
of the cyclic GC's reach (`gc_freeze`) and a frozen cycle is never collected; this used to keep
every model ever served. Then the heap is compacted: frozen garbage is collected, the heap frozen
again, and glibc's freed pages returned to the OS (`malloc_trim`), which it otherwise keeps.
Measured with benchmarks/soak.py (momo-tiny, ONNX, 50 swaps, no load): RSS +149 MiB from swap 2
to 50 before, with every retired handle still alive; +0.1 MiB after.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from momo.artifact import ArtifactError
from momo.store import InvalidReference, ModelStore, StoreError
from service.batching import BatchQueue, QueueFull, WorkerDead
from service.errors import APIError, bad_request, unavailable
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("momo.service.engine")

QUEUES = ("image", "text", "pair")
INVALID_ARTIFACT = "cannot load %s: its artifact is corrupt, incomplete or unreadable (see the server log)"
NO_MODEL_MESSAGE = "no model yet — run `make pretrain-default` (or activate one with `momo models activate`)"


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


def freeze_heap() -> None:
    """Move every object alive now (modules, the model, its runtime) out of the cyclic GC's reach.

    A server's long-lived heap is large; without this, each full collection walks all of it while
    holding the GIL, which shows up as ~100 ms latency spikes under load (measured: p99 at 32
    clients 156 ms -> 52 ms). Called after start-up and after each model swap (once the old
    model is gone). What was frozen before is unfrozen first, so frozen objects that have become
    cyclic garbage since are collected too.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _libc_malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:  # pragma: no cover - no loadable C library
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def compact_heap(freeze: bool) -> None:
    """After a model is freed: collect (and re-freeze the heap when `freeze`), then give the freed
    memory back to the OS. glibc keeps freed pages in its arenas for reuse; a retired model's
    weights and runtime buffers are tens of MiB (measured: RSS stayed ~90 MiB above the start after
    5 swaps without `malloc_trim`, ~4 MiB with it). Elsewhere (musl, macOS) only the GC part runs."""
    if freeze:
        freeze_heap()
    else:
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Engine:
    """Owns the served `ModelHandle`; loads, swaps and retires them."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = ModelStore(settings.model_store)
        self.current: ModelHandle | None = None
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._activate_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.activating: str | None = None
        self.tracer: Any = None  # service.tracing.BatchTracer when tracing is on (set by create_app)
        if metrics is not None:
            metrics.watch_queues(self.queue_states)

    # --- loading ----------------------------------------------------------------------------------
    def _load_handle(self, reference: str | None) -> ModelHandle:
        from momo.runtime import load_runtime  # imported lazily: numpy-only until a model is loaded

        s = self.settings
        if s.runtime == "auto":
            runtime, choice = self._load_fastest(reference)
            handle = ModelHandle(runtime, s, self.metrics, kind=choice.chosen, tracer=self.tracer)
            handle.runtime_choice = choice.report()
        else:
            runtime = load_runtime(
                reference,
                kind=s.runtime,
                store=self.store,
                device=s.device,
                threads=s.threads,
                torchscript=s.torchscript,
                cache_dir=s.runtime_cache_dir,
            )
            handle = ModelHandle(runtime, s, self.metrics, tracer=self.tracer)
        handle.start()
        return handle

    def _load_fastest(self, reference: str | None) -> tuple[Any, Any]:
        """`runtime=auto` (service/runtime_choice.py)."""
        from momo.artifact import load_artifact
        from momo.graphs import weights_sha256
        from momo.runtime import load_runtime
        from service import runtime_choice

        s = self.settings
        if reference is not None and (Path(reference) / "manifest.json").is_file():
            artifact = load_artifact(reference)
        else:
            artifact = self.store.load(reference)

        def load(kind: str) -> Any:
            return load_runtime(
                artifact, kind=kind, device=s.device, threads=s.threads, cache_dir=s.runtime_cache_dir
            )

        key = f"{weights_sha256(artifact)}|{s.device}|threads={s.threads}|batch={s.effective_max_batch}"
        return runtime_choice.choose(
            load,
            artifact,
            batch=s.effective_max_batch,
            tolerance=s.runtime_auto_tolerance,
            key=key,
            data_dir=s.data_dir,
        )

    async def start(self) -> None:
        """Load the configured (or active) model. With none in the store, stay up but not ready."""
        reference = self.settings.model
        # load_error is shown by the unauthenticated /ready: it names no server path (the log does)
        try:
            self.store.locate(reference)  # the configured model may be a directory path
        except StoreError as exc:
            self.load_error = NO_MODEL_MESSAGE
            log.warning("%s (%s)", NO_MODEL_MESSAGE, exc)
            return
        try:
            handle = await asyncio.to_thread(self._load_handle, reference)
        except (ArtifactError, StoreError, RuntimeError, ValueError, OSError) as exc:
            self.load_error = "cannot load the configured model (see the server log)"
            log.error("cannot load model %s: %s", reference or "(active)", exc)
            return
        self._install(handle)
        log.info("serving %s (%s on %s)", handle.reference, handle.kind, handle.device)

    def _install(self, handle: ModelHandle) -> ModelHandle | None:
        with self._lock:
            old, self.current = self.current, handle
            self.load_error = None
        if self.metrics is not None:
            self.metrics.set_model(handle.name, handle.version, handle.kind, handle.device)
        return old

    async def activate(self, reference: str, *, persist: bool = True) -> tuple[ModelHandle, bool]:
        """Load `reference`, persist it as the store's active version, switch to it; returns
        (handle, changed). Requests keep flowing: the old model finishes its work, then closes."""
        async with self._activate_lock:
            try:
                path = self.store.resolve(reference)  # checks the reference grammar first
            except InvalidReference as exc:
                raise APIError(400, str(exc), "invalid_model_reference") from exc
            except StoreError as exc:
                raise APIError(404, str(exc), "model_not_found") from exc
            if path.parent.parent.resolve() != self.store.root.resolve():  # a symlink out of the store
                raise APIError(404, f"{reference!r} is not a version in the store", "model_not_found")
            current = self.current
            if current is not None and Path(current.artifact.path).resolve() == path.resolve():
                if persist:
                    await asyncio.to_thread(self.store.activate, current.reference)
                return current, False
            self.activating = reference
            # Errors name the reference and a stable code; the detail (with server paths) is logged.
            try:
                handle = await asyncio.to_thread(self._load_handle, str(path))
            except (ArtifactError, StoreError) as exc:
                self._count("failed")
                log.warning("cannot load %s: %s", reference, exc)
                raise APIError(409, INVALID_ARTIFACT % reference, "model_invalid") from exc
            except Exception as exc:
                self._count("failed")
                log.exception("loading %s failed", reference)
                raise APIError(
                    500, f"cannot load {reference}: internal error (see the server log)", "model_load_failed"
                ) from exc
            finally:
                self.activating = None
            if persist:
                try:
                    await asyncio.to_thread(self.store.activate, handle.reference)
                except (ArtifactError, StoreError, OSError) as exc:
                    await asyncio.to_thread(handle.retire, 1.0)
                    self._count("failed")
                    log.warning("cannot mark %s active: %s", reference, exc)
                    raise APIError(409, INVALID_ARTIFACT % reference, "model_invalid") from exc
            old = self._install(handle)
            self._count("ok")
            log.info("activated %s (was %s)", handle.reference, old.reference if old else None)
            if old is not None:
                self._retire_later(old)
            return handle, True

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.model_swaps.labels(outcome).inc()

    def _retire_later(self, handle: ModelHandle) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(handle))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, handle: ModelHandle) -> None:
        await asyncio.to_thread(handle.retire, self.settings.request_timeout_s)
        del handle  # the last reference: the model is freed here, before the heap is compacted
        await asyncio.to_thread(compact_heap, self.settings.gc_freeze)

    async def close(self) -> None:
        with self._lock:
            handle, self.current = self.current, None
        if handle is not None:
            await asyncio.to_thread(handle.retire, self.settings.request_timeout_s)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # --- use ------------------------------------------------------------------------------------
    def acquire(self) -> ModelHandle:
        """Pin the current model (release with `handle._leave()`); 503 when none is loaded."""
        with self._lock:
            handle = self.current
            if handle is not None:
                handle._enter()
        if handle is None:
            raise unavailable(self.load_error or "no model is loaded", "model_not_loaded", retry_after=30)
        return handle

    @contextlib.contextmanager
    def use(self) -> Iterator[ModelHandle]:
        """Pin the current model for the duration of one request."""
        handle = self.acquire()
        try:
            yield handle
        finally:
            handle._leave()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        handle = self.current
        if handle is None:
            return False, {"status": "not_ready", "reason": self.load_error or "no model is loaded"}
        dead = [name for name, q in handle.queues.items() if not q.alive]
        if dead:
            return False, {
                "status": "not_ready",
                "reason": f"inference worker(s) not running: {', '.join(dead)}",
                "model": handle.reference,
            }
        return True, {
            "status": "ready",
            "model": handle.reference,
            "runtime": handle.kind,
            "device": handle.device,
            "pid": os.getpid(),
        }

    # --- several workers (and replicas) on one store -------------------------------------------------
    async def follow_active(self, interval_s: float) -> None:
        """Serve the store's active version whenever it changes (another worker or replica, or
        `momo models activate`, moved it): how a hot swap reaches every worker. Runs until cancelled."""
        seen = await asyncio.to_thread(self._active_reference)
        while True:
            await asyncio.sleep(interval_s)
            try:
                active = await asyncio.to_thread(self._active_reference)
                if active is None or active == seen:
                    continue
                seen = active
                current = self.current
                if current is not None and current.reference == active:
                    continue
                log.info("the store's active version is now %s: following", active)
                await self.activate(active, persist=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a half-written store, a bad version: keep serving, retry later
                log.warning("cannot follow the store's active version: %s", exc)

    def _active_reference(self) -> str | None:
        try:
            active = self.store.active()
        except (StoreError, OSError, ValueError, KeyError):
            return None
        return f"{active[0]}:{active[1]}" if active else None

    async def watch_workers(self, interval_s: float, on_dead: Any) -> None:
        """Call `on_dead(reason)` once when an inference thread of the served model has died (with
        several API processes, the process then exits and its supervisor starts a fresh one)."""
        while True:
            await asyncio.sleep(interval_s)
            ok, detail = self.readiness()
            if not ok and self.current is not None:
                on_dead(str(detail.get("reason")))
                return

    def queue_states(self) -> dict[str, tuple[int, bool]]:
        handle = self.current
        if handle is None:
            return {}
        return {name: (q.depth, q.alive) for name, q in handle.queues.items()}
