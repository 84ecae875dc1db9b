"""Domain errors carry their HTTP status, stable code and remediation; one handler renders
them (see `vivix.app`). Business rules raise these, never HTTPException."""

from __future__ import annotations

from typing import Any, ClassVar


class VivixError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "Something went wrong on our side."
    default_next: ClassVar[str] = (
        "Retry later; if it persists, contact the operator with the request id."
    )

    def __init__(
        self,
        message: str | None = None,
        *,
        next: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.message = message or self.default_message
        self.next = next or self.default_next
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.message)

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "error": self.code,
            "message": self.message,
            "next": self.next,
            "request_id": request_id,
            **self.extra,
        }


class InvalidJson(VivixError):
    status = 400
    code = "INVALID_JSON"
    default_message = "The request body is not a JSON object."
    default_next = 'Send a JSON object as the body, e.g. {"model": "…", "prompt": "…"}.'


class Unauthorized(VivixError):
    status = 401
    code = "UNAUTHORIZED"
    default_message = "Missing or malformed Authorization header."
    default_next = "Send the header `Authorization: Bearer <your API key>`."


class KeyInvalid(VivixError):
    status = 401
    code = "KEY_INVALID"
    default_message = "This API key does not exist."
    default_next = "Check the key for typos, or create a new one."


class KeyRevoked(VivixError):
    status = 401
    code = "KEY_REVOKED"
    default_message = "This API key has been revoked."
    default_next = "Create a new key and use it instead."


class InsufficientCredits(VivixError):
    status = 402
    code = "INSUFFICIENT_CREDITS"
    default_message = "Not enough credits for this generation."
    default_next = "Wait for the next cycle's grant, lower the cost (fewer results, lower resolution or duration), or ask the operator for credits."


class TierLocked(VivixError):
    status = 403
    code = "TIER_LOCKED"
    default_message = "Your plan does not include API access."
    default_next = "Upgrade to the pro or ultimate tier to use the API."


class ModelNotAllowed(VivixError):
    status = 403
    code = "MODEL_NOT_ALLOWED"
    default_message = "This model isn't enabled for your account."
    default_next = "Ask the operator to enable it for your account."


class ModelNotFound(VivixError):
    status = 404
    code = "MODEL_NOT_FOUND"
    default_message = "There is no model with this slug."
    default_next = "List the models your key can use with GET /api/v1/models."


class GenerationNotFound(VivixError):
    status = 404
    code = "GENERATION_NOT_FOUND"
    default_message = "No generation with this id exists for your account."
    default_next = "Check the id; list your generations with GET /api/v1/generations."


class IdempotencyConflict(VivixError):
    status = 409
    code = "IDEMPOTENCY_CONFLICT"
    default_message = "This Idempotency-Key was already used with a different request body."
    default_next = "Use a new Idempotency-Key for a different request, or resend the original body."


class NotCancelable(VivixError):
    status = 409
    code = "NOT_CANCELABLE"
    default_message = "This generation has already finished and can't be canceled."
    default_next = "Nothing to do: read its final state with GET /api/v1/generations/{id}."


class WebhookLimit(VivixError):
    status = 409
    code = "WEBHOOK_LIMIT"
    default_message = "This account already has the maximum number of webhook endpoints."
    default_next = (
        "Delete an endpoint you no longer use (DELETE /api/v1/webhooks/{id}), then retry."
    )


class WebhookNotFound(VivixError):
    status = 404
    code = "WEBHOOK_NOT_FOUND"
    default_message = "No such webhook endpoint or delivery on your account."
    default_next = "Check the id; list your endpoints with GET /api/v1/webhooks."


class PayloadTooLarge(VivixError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "The request body is larger than 64 KiB."
    default_next = "Shorten the request; pass reference images as URLs, not inline data."


class UnsupportedMediaType(VivixError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "POST bodies must be sent as application/json."
    default_next = "Set the header `Content-Type: application/json`."


class InvalidParams(VivixError):
    status = 422
    code = "INVALID_PARAMS"
    default_message = "A parameter is invalid."
    default_next = "Fix the named field; GET /api/v1/models lists each model's params."

    def __init__(self, field: str, reason: str, **kwargs: Any) -> None:
        super().__init__(f"Invalid `{field}`: {reason}", field=field, reason=reason, **kwargs)


class RateLimited(VivixError):
    status = 429
    code = "RATE_LIMIT"
    default_message = "Too many requests: you are over your per-minute call limit."
    default_next = "Wait `retry_after` seconds before calling again."


class ConcurrencyLimited(VivixError):
    status = 429
    code = "CONCURRENCY_LIMIT"
    default_message = "Too many generations in flight for this account."
    default_next = "Wait for a pending or processing generation to finish, then submit again."


class ProviderDown(VivixError):
    status = 503
    code = "PROVIDER_DOWN"
    default_message = "Every provider route for this model is unavailable right now."
    default_next = "Retry after the Retry-After delay; nothing was charged."


class NotFound(VivixError):
    """A path that does not exist (not a generation id): keeps the error body shape."""

    status = 404
    code = "NOT_FOUND"
    default_message = "No such endpoint."
    default_next = "Check the URL against the API reference."


class MethodNotAllowed(VivixError):
    status = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "This endpoint does not accept this HTTP method."
    default_next = "Check the method against the API reference."


class AdminUnauthorized(VivixError):
    status = 401
    code = "UNAUTHORIZED"
    default_message = "Missing or wrong admin token."
    default_next = (
        "Send `Authorization: Bearer $VIVIX_ADMIN_TOKEN`; the admin API is off when it is unset."
    )


class AdminThrottled(VivixError):
    status = 429
    code = "RATE_LIMIT"
    default_message = "Too many failed admin token attempts from this address."
    default_next = "Wait for the time in Retry-After, then retry with the right token."

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(headers={"Retry-After": str(retry_after_s)}, retry_after=retry_after_s)


class AdminNotFound(VivixError):
    status = 404
    code = "NOT_FOUND"
    default_message = "No such object."
    default_next = "Check the account name/id or key prefix."


class AdminConflict(VivixError):
    status = 409
    code = "CONFLICT"
    default_message = "The object already exists."
    default_next = "Pick another name."


class AdminInvalid(VivixError):
    status = 422
    code = "INVALID_PARAMS"
    default_message = "Invalid admin request."
    default_next = "Fix the named field."

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"Invalid `{field}`: {reason}", field=field, reason=reason)


class AccountSuspended(VivixError):
    status = 403
    code = "ACCOUNT_SUSPENDED"
    default_message = "This account is suspended."
    default_next = "Contact the operator of this Vivix server."


class SignInFailed(VivixError):
    status = 401
    code = "SIGNIN_FAILED"
    default_message = "That email and password don't match."
    default_next = "Check both and try again; an operator can reset your password."


class SignInThrottled(VivixError):
    status = 429
    code = "SIGNIN_THROTTLED"
    default_message = "Too many failed sign-ins. Wait a while before trying again."
    default_next = "Wait `retry_after` seconds, then try again."


class CsrfRejected(VivixError):
    status = 403
    code = "CSRF_FAILED"
    default_message = "This form has expired or did not come from this site."
    default_next = "Reload the page and submit the form again."


class SignupClosed(VivixError):
    status = 403
    code = "SIGNUP_CLOSED"
    default_message = "Sign-up is closed on this server."
    default_next = "Ask the operator to create a user for you."


class KeyNotFound(VivixError):
    status = 404
    code = "KEY_NOT_FOUND"
    default_message = "No such API key on this account."
    default_next = "Reload the list of keys."
