"""A policy server in the reference REST protocol (:mod:`vla_spec.rest`), on FastAPI + uvicorn.

``POST /act`` answers one action per request, as OpenVLA's ``vla-scripts/deploy.py`` does, but:

* Concurrent requests are batched: the first request waits at most ``max_wait_ms`` for others, up
  to ``max_batch_size``; the batch is one ``predict_action`` (one forward pass; the tokens do not
  depend on the key, so each request's action is then decoded with its own ``unnorm_key``). Each
  response is its own request's action. The model runs on one worker thread, so the event loop
  keeps accepting (and refusing) requests meanwhile.
* Bad input is a 4xx with ``{"detail": one-line reason}`` and the server keeps serving: 400 for a
  body that is not the protocol (not JSON, wrong image shape or dtype, no instruction, an unknown
  ``unnorm_key``), 413 for a body over ``max_body_bytes``. A model error is a 500 with its reason,
  logged with its traceback here. (The reference answers every failure with ``"error"`` and 200.)
* ``GET /stats``: requests answered and the batch sizes formed so far (``{"batch_sizes": {size: count}}``).

The model is any object with ``predict_action(images, instructions, unnorm_key)`` returning an
:class:`vla_spec.actions.ActionPrediction` and ``action_processor(unnorm_key)`` (the native
:class:`vla_spec.model.OpenVLA`, or :class:`vla_spec.model.hf_remote.HFRemoteOpenVLA` when the
operator passes ``--trust-remote-code``). FastAPI is imported inside :func:`create_app` (the
``serve`` extra).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations (``Request``)
# at run time, and they are imported inside create_app.

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_spec.normalization import UnnormKeyError
from vla_spec.rest import ACT_PATH, ActRequest, BadRequest, decode_request, encode_action

LOG = logging.getLogger("vla_spec.serve")


@dataclass(frozen=True)
class ServeOptions:
    """Batching and input limits of a server."""

    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024  # a 1024 x 1024 x 3 image is 4.2 MB as base64

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_wait_ms < 0 or self.max_body_bytes < 1:
            raise ValueError(f"batch size and body limit must be >= 1 and the wait >= 0, got {self}")


@dataclass
class Batcher:
    """Groups queued requests into batches and runs them through the model on one worker thread."""

    model: Any
    options: ServeOptions
    batch_sizes: Counter[int] = field(default_factory=Counter)
    _queue: asyncio.Queue[tuple[ActRequest, asyncio.Future[np.ndarray]]] = field(default_factory=asyncio.Queue)
    _executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model"))

    async def submit(self, request: ActRequest) -> np.ndarray:
        """The action for ``request`` (raises what the model raised for its batch)."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _next_batch(self) -> list[tuple[ActRequest, asyncio.Future[np.ndarray]]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.max_wait_ms / 1000
        while len(batch) < self.options.max_batch_size:
            remaining = deadline - loop.time()
            try:
                item = await asyncio.wait_for(self._queue.get(), remaining) if remaining > 0 else self._queue.get_nowait()
            except (TimeoutError, asyncio.QueueEmpty):
                break
            batch.append(item)
        return batch

    def predict(self, requests: list[ActRequest]) -> list[np.ndarray]:
        """One ``predict_action`` for the batch, then each action decoded with its own key."""
        prediction = self.model.predict_action(
            [r.image for r in requests], [r.instruction for r in requests], requests[0].unnorm_key
        )
        return [
            prediction.actions[i] if r.unnorm_key == requests[0].unnorm_key
            else self.model.action_processor(r.unnorm_key).decode(prediction.token_ids[i])[1]
            for i, r in enumerate(requests)
        ]

    def close(self) -> None:
        """Stop the worker thread; queued batches are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        """Serve batches until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self.batch_sizes[len(batch)] += 1
            try:
                actions = await loop.run_in_executor(self._executor, self.predict, [request for request, _ in batch])
            except Exception as error:  # noqa: BLE001 - every request of the batch gets the model's error
                LOG.exception("the model failed on a batch of %d", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), action in zip(batch, actions):
                if not future.done():
                    future.set_result(action)


def create_app(model: Any, options: ServeOptions = ServeOptions()) -> Any:
    """The FastAPI application serving ``model`` (see the module docstring)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    batcher = Batcher(model, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.close()

    app = FastAPI(title="vla-spec policy server", lifespan=lifespan)
    app.state.batcher = batcher

    def refuse(status: int, reason: str) -> Any:
        return JSONResponse({"detail": reason}, status_code=status)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None once it exceeds the limit (read no further)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > options.max_body_bytes:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > options.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(ACT_PATH)
    async def act(request: Request) -> Any:
        body = await read_body(request)
        if body is None:
            return refuse(413, f"body larger than the server's limit of {options.max_body_bytes} bytes (--max-body-mb)")
        try:
            parsed = decode_request(body)
            model.action_processor(parsed.unnorm_key)  # an unknown or missing key is the client's mistake
        except BadRequest as error:
            return refuse(400, str(error))
        except UnnormKeyError as error:
            return refuse(400, f"unnorm_key: {error}")
        try:
            action = await batcher.submit(parsed)
        except Exception as error:  # noqa: BLE001 - logged with its traceback by the batcher
            return refuse(500, f"the model failed: {type(error).__name__}: {error}")
        return Response(encode_action(action, double_encode=parsed.double_encoded), media_type="application/json")

    @app.get("/stats")
    async def stats() -> Any:
        sizes = dict(sorted(batcher.batch_sizes.items()))
        return {"requests": sum(size * n for size, n in sizes.items()), "batch_sizes": {str(k): v for k, v in sizes.items()}}

    return app
