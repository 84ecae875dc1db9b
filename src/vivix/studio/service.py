"""The Studio's own rules on top of the shared services: a Studio submit goes through the
API's admission (same validation, allowlist, availability, concurrency, hold and queue)
with the signed-in user's account, under the Studio's per-user limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vivix.accounts.service import Caller
from vivix.generations import service as generations
from vivix.generations.service import Submitted
from vivix.kit.errors import RateLimited
from vivix.users.service import Viewer

if TYPE_CHECKING:
    from vivix.runtime import Runtime


def studio_caller(viewer: Viewer) -> Caller:
    """The viewer as a submitter: the account's wallet and limits, no API key."""
    return Caller(
        key_id=None,
        is_test=False,
        account=viewer.account,
        limits=viewer.limits,
        source="studio",
        user_id=viewer.user_id,
    )


async def submit_generation(
    runtime: Runtime, viewer: Viewer, body: dict[str, Any], submission_id: str | None
) -> Submitted:
    """A Studio generation through the API's own admission (same validation, allowlist,
    availability, concurrency, hold and queue). The per-minute API limit does not apply;
    the Studio's own per-user limit does. `submission_id` (one per rendered form) makes a
    double-submitted form one generation, via the same idempotency as the API's."""
    per_minute = runtime.settings.studio.generations_per_minute
    decision = await runtime.limiter.hit(f"studio-user:{viewer.user_id}", per_minute)
    if not decision.allowed:
        raise RateLimited(
            f"You can start {per_minute} generations a minute in the Studio.",
            headers={"Retry-After": str(decision.reset_after_s)},
            retry_after=decision.reset_after_s,
        )
    key = f"studio:{submission_id}" if submission_id else None
    return await generations.submit(runtime, studio_caller(viewer), body, key)
