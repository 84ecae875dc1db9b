"""Typed exceptions: one class per API error code, grouped by what a caller does about
them. Every API error carries `code`, `message`, `next`, `request_id`, the HTTP `status`
and the code's extra fields (`balance`, `needed`, `field`, `reason`, `retry_after`, ...)."""

from __future__ import annotations

from typing import Any, ClassVar


class VivixError(Exception):
    """Base of everything this package raises."""

    exit_code: ClassVar[int] = 1  # the CLI's exit status for this class of error


class APIConnectionError(VivixError):
    """The server could not be reached, or the connection broke (after retries)."""

    exit_code = 7


class APITimeoutError(APIConnectionError):
    """No answer in time (after retries)."""


class WebhookVerificationError(VivixError):
    """A webhook delivery's signature or timestamp did not verify."""


class APIError(VivixError):
    """The API answered an error (HTTP status >= 400)."""

    code: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        next: str | None = None,
        request_id: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.next = next
        self.request_id = request_id
        self.body = body or {}
        self.headers = headers or {}

    def __getattr__(self, name: str) -> Any:
        # Extra fields of the error body (`balance`, `field`, ...) read as attributes.
        body = self.__dict__.get("body") or {}
        if name in body:
            return body[name]
        raise AttributeError(name)

    def __str__(self) -> str:
        parts = [f"{self.code or self.status}: {self.message}"]
        if self.next:
            parts.append(f"next: {self.next}")
        if self.request_id:
            parts.append(f"request id: {self.request_id}")
        return " | ".join(parts)


# Groups (catch these to handle a whole class of problems).
class BadRequestError(APIError):
    """The request is malformed or its params are invalid: fix it, don't retry."""

    exit_code = 2


class AuthenticationError(APIError):
    """The API key is missing, unknown or revoked."""

    exit_code = 3


class PermissionDeniedError(APIError):
    """The key's account may not do this (tier, model allowlist)."""

    exit_code = 3


class PaymentRequiredError(APIError):
    exit_code = 4


class NotFoundError(APIError):
    exit_code = 5


class ConflictError(APIError):
    exit_code = 6


class RateLimitError(APIError):
    """Too many calls or generations in flight; `retry_after` says when, if known."""

    exit_code = 8


class ServerError(APIError):
    """The server or every provider behind it failed."""

    exit_code = 9


# One class per documented code.
class InvalidJson(BadRequestError):
    code = "INVALID_JSON"


class PayloadTooLarge(BadRequestError):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(BadRequestError):
    code = "UNSUPPORTED_MEDIA_TYPE"


class InvalidParams(BadRequestError):
    """`field` names the offending field, `reason` says what is wrong with it."""

    code = "INVALID_PARAMS"


class Unauthorized(AuthenticationError):
    code = "UNAUTHORIZED"


class KeyInvalid(AuthenticationError):
    code = "KEY_INVALID"


class KeyRevoked(AuthenticationError):
    code = "KEY_REVOKED"


class InsufficientCredits(PaymentRequiredError):
    """`balance` available, `needed` by this generation."""

    code = "INSUFFICIENT_CREDITS"


class TierLocked(PermissionDeniedError):
    code = "TIER_LOCKED"


class ModelNotAllowed(PermissionDeniedError):
    code = "MODEL_NOT_ALLOWED"


class ModelNotFound(NotFoundError):
    code = "MODEL_NOT_FOUND"


class GenerationNotFound(NotFoundError):
    code = "GENERATION_NOT_FOUND"


class WebhookNotFound(NotFoundError):
    code = "WEBHOOK_NOT_FOUND"


class EndpointNotFound(NotFoundError):
    """No such URL on this server (an older server, or a wrong base URL)."""

    code = "NOT_FOUND"


class MethodNotAllowed(BadRequestError):
    code = "METHOD_NOT_ALLOWED"


class IdempotencyConflict(ConflictError):
    code = "IDEMPOTENCY_CONFLICT"


class NotCancelable(ConflictError):
    """`status` is the generation's final status."""

    code = "NOT_CANCELABLE"


class WebhookLimit(ConflictError):
    code = "WEBHOOK_LIMIT"


class RateLimited(RateLimitError):
    code = "RATE_LIMIT"


class ConcurrencyLimited(RateLimitError):
    code = "CONCURRENCY_LIMIT"


class InternalError(ServerError):
    code = "INTERNAL_ERROR"


class ProviderDown(ServerError):
    """`reason`: `not_configured` (retrying cannot help) or `circuit_open` (retry later)."""

    code = "PROVIDER_DOWN"


class GenerationFailed(VivixError):
    """`run()` waited for a generation that ended `failed` or `canceled`; `generation`
    holds it (`error`, `message`), and nothing was charged."""

    exit_code = 10

    def __init__(self, generation: Any) -> None:
        self.generation = generation
        detail = generation.message or generation.error or generation.status
        super().__init__(f"generation {generation.generation_id} {generation.status}: {detail}")


_BY_CODE: dict[str, type[APIError]] = {}
_stack: list[type[APIError]] = [APIError]
while _stack:
    _cls = _stack.pop()
    if _cls.code:
        _BY_CODE[_cls.code] = _cls
    _stack.extend(_cls.__subclasses__())

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    415: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_class(code: str | None, status: int) -> type[APIError]:
    """The class for an error code, else for its HTTP status (a code this version of the
    client doesn't know yet still lands in the right group)."""
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, APIError)
