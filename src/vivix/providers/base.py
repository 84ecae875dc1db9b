"""The provider adapter Protocol and the errors the worker acts on without knowing the
vendor.

An adapter renders one generation on one upstream service as an asynchronous job:

    ... the worker persists its intent: `request.request_key`, our id for this submit ...
    handle = await adapter.submit(request)      # start the upstream job
    ... the worker persists `handle` before waiting on it ...
    outcome = await adapter.poll(handle, request)   # Progress until a RenderResult
    await adapter.cancel(handle)                 # best effort

`UpstreamHandle` is a small JSON object (e.g. {"request_id": "…"}): whatever the adapter
needs to find the job again. Because the worker stores it before polling, a retried
attempt after a crash calls `poll` with the stored handle instead of `submit`, so the
provider is not paid twice. A crash between the provider accepting a submit and the
handle being stored leaves only the intent: the retried attempt then asks `find` for the
job that `request_key` created, and submits (with the same key) only when there is none.
`submit` passes the key where the provider accepts one (Runware's taskUUID, ComfyUI's
prompt_id); `find` looks the job up by it, or by what identifies our request where the
protocol allows no id of ours; an adapter whose provider offers neither answers None
(README: "Resuming after a crash", per adapter). Adapters whose upstream call is
synchronous (the whole result comes back from `submit`) may put the result in the
handle's in-memory `result` field; it is never persisted, and `poll` on a handle without
it raises ProviderRetriableError(resubmit=True) so a resumed attempt submits again.

Errors (raise only these from adapter methods):
- ProviderRetriableError: transient (429, 5xx, timeouts); `retry_after_s` hints the delay;
  `resubmit=True` when the upstream job itself is lost and must be submitted again.
- ProviderRejectedError: the upstream refused this input (content policy → `content=True`
  and the generation fails with CONTENT_REJECTED; otherwise PROVIDER_ERROR). No retry.
- ProviderFatalError: the provider is misconfigured (bad credentials, unknown model);
  this route is unusable, the worker moves to the next mirror.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

# Re-exported: what a local render raises when it is stopped on request.
from vivix.renderer import RenderCanceled as RenderCanceled

UpstreamHandle = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """A reference image the client passed: its URL, and its bytes when the worker fetched
    it through the guarded client (for providers that need uploads/inline data)."""

    url: str
    data: bytes | None = None
    content_type: str | None = None


async def _ignored() -> None:
    return None


@dataclass(slots=True)
class RenderRequest:
    generation_id: str
    model: str  # our catalog slug
    category: str  # image | video | audio
    upstream_model: str  # the route's upstream model id
    params: dict[str, Any]  # validated params with defaults and a recorded seed
    options: dict[str, Any] = field(default_factory=dict)  # the route's options
    reference_images: list[ReferenceImage] = field(default_factory=list)
    # Set by the worker when the client cancels; long local renders check it.
    should_stop: Callable[[], bool] = lambda: False
    # Our id for this submit (a UUID), persisted before the upstream call, and when.
    request_key: str = ""
    requested_at: datetime | None = None
    # Set by the worker: where an adapter whose `poll` runs the whole job (local) reports
    # its fraction done meanwhile. Others return it in `Progress`.
    on_progress: Callable[[float], Awaitable[None]] = field(default=lambda _fraction: _ignored())


@dataclass(frozen=True, slots=True)
class Progress:
    """A running job: `fraction` done (0..1) when the provider reports one (the worker
    stores it, only upward); `queue_position` (1 = next) while the provider still has it
    queued, when it says. That one is not stored: to our clients the job is `processing`,
    and upstream queueing is part of the run times behind `eta_ms`."""

    fraction: float | None = None
    status: str = "processing"
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One delivered asset, already downloaded (upstream URLs expire and never reach the
    client). Dimensions/duration are filled in when known."""

    data: bytes
    content_type: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class RenderResult:
    outputs: list[OutputFile]


class ProviderError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProviderRetriableError(ProviderError):
    """Transient. Raised from `poll`, the worker keeps the handle and polls the same
    upstream job again, unless `resubmit=True` says that job is gone (failed upstream,
    expired, unknown), so only a new submit can deliver. From `submit` there is no job
    to resume either way: the next try submits again."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, resubmit: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.resubmit = resubmit


class ProviderRejectedError(ProviderError):
    def __init__(self, message: str, *, content: bool = False) -> None:
        super().__init__(message)
        self.content = content


class ProviderFatalError(ProviderError):
    pass


@runtime_checkable
class ProviderAdapter(Protocol):
    """One upstream provider. Instances are created once per process and shared by all
    jobs; they must be safe for concurrent use."""

    name: str

    async def submit(self, request: RenderRequest) -> UpstreamHandle:
        """Start the upstream job and return its handle (JSON-serializable)."""
        ...

    async def find(self, request: RenderRequest) -> UpstreamHandle | None:
        """The handle of the job a `submit` with `request.request_key` (at
        `request.requested_at`) created, if the provider has one; None when it has none —
        or offers no way to tell, which the README lists per adapter."""
        ...

    async def poll(self, handle: UpstreamHandle, request: RenderRequest) -> Progress | RenderResult:
        """One status check: Progress while running, RenderResult (outputs downloaded)
        when done. Failures raise a Provider*Error."""
        ...

    async def cancel(self, handle: UpstreamHandle) -> None:
        """Ask the upstream to stop the job; best effort, never raises for a finished job."""
        ...

    async def aclose(self) -> None:
        """Release clients and pools."""
        ...
