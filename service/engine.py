"""Which model is served, and hot swapping: `Engine` owns the current `ModelHandle`
(service/model_handle.py), loads, swaps and retires them.

A request pins the handle it started with (`Engine.acquire`, `Engine.use`), so an activation never
changes the model under a running request: the new runtime is loaded and warmed up first, the
pointer is switched under a lock, and the old handle is retired in the background once its last
request is done (its queues drain, then its runtime is closed, then the heap is compacted:
service/heap.py). With several API workers or replicas on one store, `follow_active` brings each
to the store's active version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from momo.artifact import ArtifactError
from momo.store import InvalidReference, ModelStore, StoreError
from service.errors import APIError, unavailable
from service.heap import compact_heap
from service.metrics import Metrics
from service.model_handle import ModelHandle
from service.settings import Settings

log = logging.getLogger("momo.service.engine")

INVALID_ARTIFACT = "cannot load %s: its artifact is corrupt, incomplete or unreadable (see the server log)"
NO_MODEL_MESSAGE = "no model yet — run `make pretrain-default` (or activate one with `momo models activate`)"


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
