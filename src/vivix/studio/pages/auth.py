"""Signing in and out, and open sign-up."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from vivix.kit.errors import InvalidParams, SignInFailed, SignupClosed, VivixError
from vivix.kit.http import runtime_of
from vivix.studio.web import (
    StudioRoute,
    client_address,
    cookie_secure,
    read_form,
    redirect,
    require_viewer,
    safe_next,
    viewer_of,
    web_of,
)
from vivix.users import service
from vivix.users.service import SESSION_COOKIE

router = APIRouter(route_class=StudioRoute)


@router.get("/")
async def home(request: Request) -> Response:
    viewer = await viewer_of(request)
    return RedirectResponse("/generate" if viewer else "/signin", status_code=303)


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    if await viewer_of(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    return _signin_form(request)


def _signin_form(
    request: Request, *, email: str = "", error: VivixError | None = None, status: int = 200
) -> Response:
    runtime = runtime_of(request)
    headers = error.headers if error is not None else None
    return web_of(request).page(
        request,
        "signin.html",
        {
            "email": email,
            "error": error,
            "next": safe_next(request.query_params.get("next")),
            "signup_open": runtime.settings.studio.signup == "open",
        },
        status=status,
        headers=headers,
    )


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await read_form(request, None)
    email = str(form.get("email") or "")
    password = str(form.get("password") or "")
    runtime = runtime_of(request)
    try:
        if not email.strip() or not password:
            raise SignInFailed("Enter your email and password.")
        token = await service.sign_in(
            runtime, email, password, client_address(request), request.headers.get("user-agent", "")
        )
    except VivixError as exc:
        return _signin_form(request, email=email, error=exc, status=exc.status)
    return _signed_in(request, token, str(form.get("next") or ""))


def _signed_in(request: Request, token: str, next_url: str) -> Response:
    response = redirect(safe_next(next_url))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=runtime_of(request).settings.studio.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(runtime_of(request)),
        path="/",
    )
    return response


@router.get("/signup")
async def signup_page(request: Request) -> Response:
    if runtime_of(request).settings.studio.signup != "open":
        raise SignupClosed()
    return web_of(request).page(request, "signup.html", {"email": "", "errors": {}})


@router.post("/signup")
async def signup(request: Request) -> Response:
    form = await read_form(request, None)
    runtime = runtime_of(request)
    email = str(form.get("email") or "")
    password = str(form.get("password") or "")
    try:
        if password != str(form.get("password_again") or ""):
            raise InvalidParams("password_again", "does not match the password")
        token = await service.sign_up(
            runtime, email, password, client_address(request), request.headers.get("user-agent", "")
        )
    except InvalidParams as exc:
        errors = {exc.extra["field"]: exc.extra["reason"]}
        return web_of(request).page(
            request, "signup.html", {"email": email, "errors": errors}, status=422
        )
    except VivixError as exc:
        errors = {"email": exc.message}
        return web_of(request).page(
            request, "signup.html", {"email": email, "errors": errors}, status=exc.status
        )
    return _signed_in(request, token, "/generate")


@router.post("/signout")
async def signout(request: Request) -> Response:
    viewer = await require_viewer(request)
    form = await read_form(request, viewer)
    everywhere = form.get("everywhere") == "1"
    await service.sign_out(runtime_of(request), viewer, everywhere=everywhere)
    response = redirect("/signin")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
