"""The `vivix` command: serve, worker, migrate, and the operator commands (API.md §6).

Imports of the server (SQLAlchemy, pydantic-settings, rich, ...) happen inside the
commands, so `vivix --help` and typos answer at once."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    import socket

    from rich.console import Console

    from vivix.admin.service import Actor
    from vivix.runtime import Runtime
    from vivix.settings import Settings

# Plain (click) help, not rich's: rendering it through rich costs ~0.25 s of imports.
_PLAIN_HELP: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(
    help="Vivix: a self-hostable API gateway for generative media.",
    pretty_exceptions_show_locals=False,
    **_PLAIN_HELP,
)
accounts_app = typer.Typer(help="Accounts, tiers and limits.", **_PLAIN_HELP)
keys_app = typer.Typer(help="API keys.", **_PLAIN_HELP)
credits_app = typer.Typer(help="Credits.", **_PLAIN_HELP)
models_app = typer.Typer(help="Per-account model allowlists.", **_PLAIN_HELP)
pricing_app = typer.Typer(help="Per-account price overrides.", **_PLAIN_HELP)
catalog_app = typer.Typer(help="The model catalog.", **_PLAIN_HELP)
users_app = typer.Typer(help="Studio users (people who sign in with a browser).", **_PLAIN_HELP)
generations_app = typer.Typer(help="Generations, as operators see them.", **_PLAIN_HELP)
storage_app = typer.Typer(help="Stored outputs and retention.", **_PLAIN_HELP)
webhooks_app = typer.Typer(help="Accounts' webhook endpoints.", **_PLAIN_HELP)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(models_app, name="models")
app.add_typer(pricing_app, name="pricing")
app.add_typer(catalog_app, name="catalog")
app.add_typer(users_app, name="users")
app.add_typer(generations_app, name="generations")
app.add_typer(storage_app, name="storage")
app.add_typer(webhooks_app, name="webhooks")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
T = TypeVar("T")


class _Consoles:
    """rich consoles, made on first use (rich costs ~0.1 s to import)."""

    _out: Console | None = None
    _err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console()
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True)
        return self._err


_consoles = _Consoles()


def _print(*objects: Any) -> None:
    _consoles.out.print(*objects)


def _error(text: str) -> None:
    _consoles.err.print(text)


def _table(*headers: str, **options: Any) -> Any:
    from rich.table import Table

    return Table(*headers, **options)


def _admin() -> Any:
    """The operator service (imports the whole server: only when a command runs)."""
    from vivix.admin import service

    return service


def _settings(**overrides: Any) -> Settings:
    from vivix.settings import SettingsError, load_settings

    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        _error(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _run(
    as_json: bool, work: Callable[[Runtime], Awaitable[T]], settings: Settings | None = None
) -> T:
    """Run one operator operation against the configured database."""
    from vivix.catalog.repository import CatalogError
    from vivix.kit.errors import VivixError
    from vivix.runtime import build_runtime, close_runtime

    settings = settings or _settings()

    async def go() -> T:
        await _prepare_database(settings)
        runtime = await build_runtime(settings)
        try:
            return await work(runtime)
        finally:
            await close_runtime(runtime)

    try:
        import asyncio

        return asyncio.run(go())
    except VivixError as exc:
        if as_json:
            print(json.dumps({"error": exc.code, "message": exc.message, **exc.extra}))
        else:
            _error(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    except (CatalogError, SchemaNotReady) as exc:
        _error(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


class SchemaNotReady(Exception):
    pass


async def _prepare_database(settings: Settings) -> None:
    """Embedded SQLite is migrated automatically; PostgreSQL must be migrated explicitly
    (`vivix migrate`) so replicas never race to change the schema."""
    from vivix.migrations import current_revision, head_revision, upgrade_to_head

    if settings.is_sqlite:
        await upgrade_to_head(settings.resolved_database_url)
        return
    current = await current_revision(settings.resolved_database_url)
    if current != head_revision():
        raise SchemaNotReady(
            f"the database schema is at {current or 'nothing'}, this version needs {head_revision()}: "
            "run `vivix migrate` first"
        )


def _cli_actor() -> Actor:
    """The audit log's name for whoever runs the CLI: the OS user and the machine."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with an arbitrary uid)
        user = f"uid{os.getuid()}"
    from vivix.admin.service import Actor

    return Actor(f"cli:{user}@{socket.gethostname()}")


def _emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def _render_account(data: dict[str, Any]) -> None:
    table = _table(show_header=False, box=None)
    for key in (
        "name",
        "id",
        "tier",
        "api_access",
        "calls_per_minute",
        "concurrent_jobs",
        "monthly_credits",
        "balance",
        "held",
        "spent_this_cycle",
        "granted_this_cycle",
        "cycle_resets_at",
        "ledger_sum",
    ):
        if key in data:
            table.add_row(f"[bold]{key}[/bold]", str(data[key]))
    table.add_row("[bold]allowed_models[/bold]", ", ".join(data["allowed_models"]) or "(none)")
    if data.get("price_overrides"):
        table.add_row("[bold]price_overrides[/bold]", json.dumps(data["price_overrides"]))
    _print(table)
    if data.get("keys"):
        _render_keys(data["keys"])


def _render_keys(keys: list[dict[str, Any]]) -> None:
    table = _table()
    # Prefix and id are what an operator copies into `keys revoke`: never wrap them.
    table.add_column("prefix", no_wrap=True)
    table.add_column("id", no_wrap=True)
    for name in ("name", "test", "created", "revoked"):
        table.add_column(name)
    for k in keys:
        table.add_row(
            k["prefix"], k["id"], k["name"], str(k["test"]), k["created_at"], k["revoked_at"] or ""
        )
    _print(table)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default VIVIX_HOST, else 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default VIVIX_PORT, else 8000).")] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only, no embedded worker.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the API (and, unless --no-worker, an embedded worker)."""
    import uvicorn

    from vivix.app import create_app

    settings = _settings(host=host, port=port)
    # Bound before anything is created or printed: a busy port must not cost the demo key.
    listener = _bind(settings.host, settings.port, port_from_flag=port is not None)
    demo = _run(as_json, _admin().ensure_demo_account, settings)
    url = settings.resolved_public_url
    if demo:
        if as_json:
            print(
                json.dumps(
                    {
                        "demo_account": _admin().DEMO_ACCOUNT,
                        "demo_key": demo.key,
                        "studio_email": demo.email,
                        "studio_password": demo.password,
                        "url": url,
                    }
                )
            )
        else:
            # Plain print: rich would wrap the key and the command, breaking copy-paste.
            print(f"\nDemo account created. Its API key (shown once):\n\n  {demo.key}\n")
            print(
                f"Try:\n  curl -X POST {url}/api/v1/generate -H 'Authorization: Bearer {demo.key}' "
                "-H 'Content-Type: application/json' "
                '-d \'{"model": "vivix-local-image", "prompt": "a misty forest at dawn"}\'\n',
            )
            print(
                f"Studio: open {url}/ and sign in (shown once; an operator of this server):\n\n"
                f"  email     {demo.email}\n  password  {demo.password}\n",
                flush=True,
            )
    elif not as_json:
        _print("Using the existing database; create keys with `vivix keys create ACCOUNT`.")
    if not as_json:
        # uvicorn doesn't announce an address it was handed a socket for: say it here.
        host, port = listener.getsockname()[:2]
        _print_webhooks_pointer(settings)
        print(f"Listening on http://{host}:{port}; API reference at {url}/docs", flush=True)
    fastapi_app = create_app(settings, embedded_worker=not no_worker)
    # uvicorn's lines through our processors (JSON with VIVIX_LOG_FORMAT=json), from its
    # first line on; the runtime configures the same again with the secrets it knows.
    from vivix.kit.logging import configure_logging

    configure_logging(settings.log_level, log_format=settings.log_format.value)
    config = uvicorn.Config(
        fastapi_app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[listener])


def _print_webhooks_pointer(settings: Settings) -> None:
    local = (
        ""
        if settings.webhooks.allow_insecure_targets
        else " (a receiver on this machine: VIVIX_WEBHOOKS__ALLOW_INSECURE_TARGETS=true)"
    )
    print(
        f"Webhooks: register a receiver with POST /api/v1/webhooks{local}.\n"
        "A 20-line one that checks both signatures (standard library only):\n"
        "  vivix webhooks example > receiver.py\n"
        "  VIVIX_WEBHOOK_SECRET=whsec_… PORT=9000 python receiver.py\n"
    )


def _bind(host: str, port: int, *, port_from_flag: bool) -> socket.socket:
    """The listening socket, or exit 2 with a message naming the setting to change."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            setting = "--port" if port_from_flag else "VIVIX_PORT (or --port)"
            _error(
                f"[red]error:[/red] port {port} on {host} is already in use; "
                f"choose another with {setting}, e.g. VIVIX_PORT={port + 1}."
            )
        else:
            _error(
                f"[red]error:[/red] cannot listen on {host}:{port} ({exc.strerror}); "
                "check VIVIX_HOST / --host and VIVIX_PORT / --port."
            )
        raise typer.Exit(2) from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default VIVIX_WORKER__CONCURRENCY).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (default VIVIX_METRICS_PORT)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a standalone worker. SIGTERM/SIGINT: stop claiming, let running jobs finish
    within the grace period, hand the rest back to the queue."""
    import asyncio
    import signal

    from vivix.kit.metrics import serve_metrics
    from vivix.kit.tracing import configure_tracing, shutdown_tracing
    from vivix.worker.runner import Worker

    settings = _settings(metrics_port=metrics_port)
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port)

    async def work(runtime: Runtime) -> int:
        configure_tracing(settings.otel_endpoint, "vivix-worker")
        worker = Worker(runtime, concurrency=concurrency)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.request_stop)
        if as_json:
            print(
                json.dumps({"worker": worker.owner, "concurrency": worker.concurrency}), flush=True
            )
        else:
            _print(f"worker {worker.owner} running {worker.concurrency} jobs at once")
        try:
            await worker.run_until_stopped()
        finally:
            await worker.stop()
            shutdown_tracing()
        return worker.claimed

    claimed = _run(as_json, work, settings)
    if not as_json:
        _print(f"worker stopped after {claimed} jobs")


@app.command()
def migrate(as_json: JsonFlag = False) -> None:
    """Apply database migrations."""
    import asyncio

    from vivix.migrations import head_revision, upgrade_to_head

    settings = _settings()
    asyncio.run(upgrade_to_head(settings.resolved_database_url))
    _emit(
        {"revision": head_revision()},
        as_json,
        lambda d: _print(f"schema at {d['revision']}"),
    )


@accounts_app.command("create")
def accounts_create(
    name: str,
    tier: Annotated[str, typer.Option(help="free, standard, pro or ultimate.")] = "pro",
    credits: Annotated[
        int | None, typer.Option(help="Opening credits instead of the tier's monthly grant.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an account (first cycle granted, tier's default models allowed)."""
    data = _run(
        as_json, lambda rt: _admin().create_account(rt, name, tier, credits, actor=_cli_actor())
    )
    _emit(data, as_json, _render_account)


@accounts_app.command("show")
def accounts_show(account: str, as_json: JsonFlag = False) -> None:
    """Show an account, its keys and its ledger sum."""
    _emit(_run(as_json, lambda rt: _admin().show_account(rt, account)), as_json, _render_account)


@accounts_app.command("list")
def accounts_list(as_json: JsonFlag = False) -> None:
    """List accounts."""

    def render(rows: list[dict[str, Any]]) -> None:
        table = _table("name", "tier", "balance", "held", "models")
        for r in rows:
            table.add_row(
                r["name"],
                r["tier"],
                str(r["balance"]),
                str(r["held"]),
                str(len(r["allowed_models"])),
            )
        _print(table)

    _emit(_run(as_json, _admin().list_accounts), as_json, render)


@accounts_app.command("update")
def accounts_update(
    account: str,
    tier: Annotated[str | None, typer.Option()] = None,
    calls_per_minute: Annotated[int | None, typer.Option()] = None,
    concurrent_jobs: Annotated[int | None, typer.Option()] = None,
    monthly_credits: Annotated[int | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change an account's tier or override its limits."""
    data = _run(
        as_json,
        lambda rt: _admin().update_account(
            rt,
            account,
            actor=_cli_actor(),
            tier=tier,
            calls_per_minute=calls_per_minute,
            concurrent_jobs=concurrent_jobs,
            monthly_credits=monthly_credits,
        ),
    )
    _emit(data, as_json, _render_account)


@accounts_app.command("suspend")
def accounts_suspend(account: str, as_json: JsonFlag = False) -> None:
    """Suspend an account: its keys answer 403 ACCOUNT_SUSPENDED, Studio sessions end,
    running generations finish and settle. Nothing is deleted."""
    data = _run(
        as_json,
        lambda rt: _admin().set_suspended(rt, account, suspended=True, actor=_cli_actor()),
    )
    _emit(data, as_json, _render_account)


@accounts_app.command("reinstate")
def accounts_reinstate(account: str, as_json: JsonFlag = False) -> None:
    """Lift a suspension."""
    data = _run(
        as_json,
        lambda rt: _admin().set_suspended(rt, account, suspended=False, actor=_cli_actor()),
    )
    _emit(data, as_json, _render_account)


@keys_app.command("create")
def keys_create(
    account: str,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    test: Annotated[
        bool, typer.Option("--test", help="A vvx_test_ key: local renderer, no charge.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; it is printed once."""
    data = _run(
        as_json, lambda rt: _admin().create_key(rt, account, name, test, actor=_cli_actor())
    )
    _emit(data, as_json, lambda d: _print(f"{d['key']}\n(shown once; listed as {d['prefix']})"))


@keys_app.command("list")
def keys_list(account: str, as_json: JsonFlag = False) -> None:
    """List an account's keys by prefix (the keys themselves are never shown again)."""

    _emit(_run(as_json, lambda rt: _admin().list_keys(rt, account)), as_json, _render_keys)


@keys_app.command("revoke")
def keys_revoke(key_prefix_or_id: str, as_json: JsonFlag = False) -> None:
    """Revoke a key by its 15-char prefix or its id (effective immediately)."""
    data = _run(as_json, lambda rt: _admin().revoke_key(rt, key_prefix_or_id, actor=_cli_actor()))
    _emit(data, as_json, lambda d: _print(f"revoked {d['prefix']} at {d['revoked_at']}"))


@credits_app.command("grant")
def credits_grant(
    account: str,
    amount: int,
    reason: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """Grant credits to an account."""
    data = _run(
        as_json, lambda rt: _admin().grant_credits(rt, account, amount, reason, actor=_cli_actor())
    )
    _emit(data, as_json, lambda d: _print(f"{d['name']}: balance {d['balance']}"))


@credits_app.command("adjust")
def credits_adjust(
    account: str,
    amount: Annotated[int, typer.Option(help="Signed: --amount -50 takes 50 credits away.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the ledger and the audit log).")],
    as_json: JsonFlag = False,
) -> None:
    """Correct an account's balance (an adjustment entry; never below zero)."""
    data = _run(
        as_json, lambda rt: _admin().adjust_credits(rt, account, amount, reason, actor=_cli_actor())
    )
    _emit(data, as_json, lambda d: _print(f"{d['name']}: balance {d['balance']}"))


@models_app.command("allow")
def models_allow(account: str, slugs: list[str], as_json: JsonFlag = False) -> None:
    """Add models to an account's allowlist."""
    data = _run(
        as_json, lambda rt: _admin().set_models(rt, account, slugs, allow=True, actor=_cli_actor())
    )
    _emit(data, as_json, lambda d: _print(", ".join(d["allowed_models"]) or "(none)"))


@models_app.command("deny")
def models_deny(account: str, slugs: list[str], as_json: JsonFlag = False) -> None:
    """Remove models from an account's allowlist."""
    data = _run(
        as_json, lambda rt: _admin().set_models(rt, account, slugs, allow=False, actor=_cli_actor())
    )
    _emit(data, as_json, lambda d: _print(", ".join(d["allowed_models"]) or "(none)"))


@pricing_app.command("override")
def pricing_override(
    account: str,
    slug: str,
    factor: Annotated[str | None, typer.Option(help="Scale the model's prices, e.g. 0.8.")] = None,
    rows: Annotated[
        str | None, typer.Option(help="Replacement pricing rows as a JSON array.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the override.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Override one model's prices for one account."""
    parsed_rows = None
    if rows is not None:
        try:
            parsed_rows = json.loads(rows)
        except json.JSONDecodeError:
            _error("[red]error:[/red] --rows must be a JSON array")
            raise typer.Exit(2) from None
    data = _run(
        as_json,
        lambda rt: _admin().set_price_override(
            rt, account, slug, factor=factor, rows=parsed_rows, clear=clear, actor=_cli_actor()
        ),
    )
    _emit(
        data,
        as_json,
        lambda d: _print(
            f"{slug} for {d['name']}: band {d['credits_band']['min']}-{d['credits_band']['max']}"
        ),
    )


@app.command("audit-log")
def audit_log(
    account: Annotated[str | None, typer.Option(help="Only this account (name or id).")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. credits.grant, key.revoke.")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Entries per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Operator actions, newest first: who changed what, before and after."""

    def render(page: dict[str, Any]) -> None:
        table = _table("when", "actor", "action", "target", "before → after")
        for entry in page["data"]:
            change = ", ".join(
                f"{k}: {json.dumps((entry['before'] or {}).get(k))} → {json.dumps(v)}"
                for k, v in (entry["after"] or {}).items()
            )
            table.add_row(
                entry["created_at"],
                entry["actor"],
                entry["action"],
                f"{entry['target_type']} {entry['target_id']}",
                change,
            )
        _print(table)
        if page["next_cursor"]:
            _print(f"more: --cursor {page['next_cursor']}")

    page = _run(
        as_json,
        lambda rt: _admin().list_audit_log(
            rt, limit=limit, cursor=cursor, account=account, action=action, actor=actor
        ),
    )
    _emit(page, as_json, render)


@app.command()
def audit(as_json: JsonFlag = False) -> None:
    """Check the money: balances = ledger, nothing negative, every final generation
    settled exactly once, holds = open generations, nothing charged above its estimate.
    Exits 1 listing every offending row."""

    def render(report: dict[str, Any]) -> None:
        checked = report["checked"]
        scope = f"{checked['accounts']} accounts, {checked['generations']} generations"
        if report["ok"]:
            _print(f"[green]ok[/green]: {scope}, every check holds")
            return
        for problem in report["problems"]:  # one line each: long ids must not be cut
            where = " ".join(
                f"{key}={problem[key]}"
                for key in ("account", "account_id", "generation_id", "status")
                if problem.get(key)
            )
            _consoles.out.print(
                f"{problem['check']}: {problem['detail']} ({where})", soft_wrap=True
            )
        _error(f"[red]{len(report['problems'])} problem(s)[/red] in {scope}")

    report = _run(as_json, lambda rt: _admin().audit(rt))
    _emit(report, as_json, render)
    if not report["ok"]:
        raise typer.Exit(1)


@storage_app.command("usage")
def storage_usage(as_json: JsonFlag = False) -> None:
    """Outputs in storage (files, bytes), in total and by account, as the database records
    them; outputs deleted by retention are not counted."""
    from vivix.operations import retention

    def render(usage: dict[str, Any]) -> None:
        table = _table("account", "generations", "files", "bytes")
        for name, row in usage["by_account"].items():
            table.add_row(name, str(row["generations"]), str(row["files"]), _size(row["bytes"]))
        table.add_row(
            "total", str(usage["generations"]), str(usage["files"]), _size(usage["bytes"])
        )
        _print(table)

    async def work(runtime: Runtime) -> dict[str, Any]:
        return (await retention.storage_usage(runtime)).as_dict()

    _emit(_run(as_json, work), as_json, render)


@storage_app.command("prune")
def storage_prune(as_json: JsonFlag = False) -> None:
    """Run one retention pass now (workers run it every VIVIX_RETENTION__SWEEP_INTERVAL_SECONDS):
    delete outputs past VIVIX_RETENTION__OUTPUTS_DAYS, erase records past
    VIVIX_RETENTION__GENERATIONS_DAYS. Nothing to do when neither is set."""
    from vivix.operations import retention

    def render(report: dict[str, int]) -> None:
        _print(
            f"{report['outputs_expired']} generations' outputs deleted "
            f"({report['files_deleted']} files, {_size(report['bytes_deleted'])}); "
            f"{report['records_erased']} records erased"
        )

    async def work(runtime: Runtime) -> dict[str, int]:
        return (await retention.prune(runtime)).as_dict()

    _emit(_run(as_json, work), as_json, render)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@generations_app.command("show")
def generations_show(generation_id: str, as_json: JsonFlag = False) -> None:
    """One generation with its engine state, last error and every attempt's error."""

    def render(data: dict[str, Any]) -> None:
        table = _table(show_header=False, box=None)
        for key in (
            "generation_id", "status", "model", "account_id", "provider", "attempts",
            "error_code", "error_message", "last_error", "lease_owner", "run_after",
        ):  # fmt: skip
            table.add_row(f"[bold]{key}[/bold]", str(data.get(key)))
        _print(table)
        if data["attempt_errors"]:
            attempts = _table("attempt", "at", "worker", "error")
            for entry in data["attempt_errors"]:
                attempts.add_row(
                    str(entry["attempt"]), entry["at"], entry["worker"], entry["error"]
                )
            _print(attempts)

    _emit(_run(as_json, lambda rt: _admin().show_generation(rt, generation_id)), as_json, render)


@catalog_app.command("list")
def catalog_list(as_json: JsonFlag = False) -> None:
    """Models, their provider routes and whether each is available now."""

    def render(rows: list[dict[str, Any]]) -> None:
        table = _table("slug", "category", "credits", "routes (provider: available)")
        for r in rows:
            routes = ", ".join(f"{x['provider']}:{_route_state(x)}" for x in r["routes"])
            table.add_row(
                r["slug"],
                r["category"],
                f"{r['credits_band']['min']}-{r['credits_band']['max']}",
                routes,
            )
        _print(table)

    _emit(_run(as_json, _admin().catalog_list), as_json, render)


@users_app.command("create")
def users_create(
    email: str,
    account: Annotated[
        str | None,
        typer.Option(help="The account (name or id) to join; default: a new free account."),
    ] = None,
    operator: Annotated[
        bool, typer.Option("--operator", help="May open the Studio's operator pages.")
    ] = False,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a Studio user; a generated password is printed once."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    data = _run(
        as_json,
        lambda rt: _admin().create_user(
            rt, email, account=account, operator=operator, password=password, actor=_cli_actor()
        ),
    )
    if as_json:
        fields = ("user_id", "email", "account_id", "password")
        print(json.dumps({name: data[name] for name in fields}))
        return
    role = "operator" if data["operator"] else "user"
    print(f"{role} {data['email']} in account {data['account']} ({data['account_id']})")
    if data["password"] is not None:
        # Plain print so the password is never wrapped.
        print(f"password (shown once): {data['password']}")


@users_app.command("list")
def users_list(as_json: JsonFlag = False) -> None:
    """List Studio users."""

    def render(rows: list[dict[str, Any]]) -> None:
        table = _table("email", "account", "operator", "created", "last sign-in")
        for r in rows:
            table.add_row(
                r["email"],
                r["account"],
                "yes" if r["operator"] else "",
                r["created_at"],
                r["last_sign_in_at"] or "",
            )
        _print(table)

    _emit(_run(as_json, _admin().list_users), as_json, render)


def _route_state(route: dict[str, Any]) -> str:
    if not route["configured"]:
        from vivix.providers.registry import SELF_HOSTED

        missing = "no base URL" if route["provider"] in SELF_HOSTED else "no credentials"
        return f"[red]{missing}[/red]"
    if route["circuit_open_until"]:
        return f"[yellow]circuit open until {route['circuit_open_until']}[/yellow]"
    return "[green]available[/green]"


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


def _admin_webhooks() -> Any:
    from vivix.admin import webhooks

    return webhooks


def _render_webhooks(rows: list[dict[str, Any]]) -> None:
    table = _table()
    table.add_column("id", no_wrap=True)
    table.add_column("url", no_wrap=True)
    for name in ("events", "enabled", "secret", "description"):
        table.add_column(name)
    for w in rows:
        state = "yes" if w["enabled"] else f"no ({w['disabled_reason']})"
        table.add_row(
            w["id"], w["url"], ", ".join(w["events"]), state, w["secret_prefix"], w["description"]
        )
    _print(table)


def _render_secret(data: dict[str, Any]) -> None:
    # Plain print: rich would wrap the secret, breaking copy-paste.
    print(f"{data['secret']}\n(shown once; endpoint {data['id']} → {data['url']})")
    if data.get("previous_secret_expires_at"):
        print(f"the previous secret keeps signing until {data['previous_secret_expires_at']}")


@webhooks_app.command("list")
def webhooks_list(account: str, as_json: JsonFlag = False) -> None:
    """An account's webhook endpoints."""
    _emit(
        _run(as_json, lambda rt: _admin_webhooks().list_webhooks(rt, account)),
        as_json,
        _render_webhooks,
    )


@webhooks_app.command("add")
def webhooks_add(
    account: str,
    url: str,
    event: Annotated[
        list[str] | None,
        typer.Option(help="Subscribe to this event (repeatable; default: every event)."),
    ] = None,
    description: Annotated[str | None, typer.Option()] = None,
    include_studio: Annotated[
        bool, typer.Option("--include-studio", help="Also Studio generations.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Add a webhook endpoint to an account; its secret is printed once."""
    data = _run(
        as_json,
        lambda rt: _admin_webhooks().add_webhook(
            rt,
            account,
            url,
            events=event or None,
            description=description,
            include_studio=include_studio,
            actor=_cli_actor(),
        ),
    )
    _emit(data, as_json, _render_secret)


@webhooks_app.command("rotate")
def webhooks_rotate(
    account: str,
    webhook_id: str,
    expire_previous_now: Annotated[
        bool,
        typer.Option("--expire-previous-now", help="Stop signing with the old secret at once."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Give an endpoint a new secret (printed once); the old one signs 24 h more."""
    data = _run(
        as_json,
        lambda rt: _admin_webhooks().rotate_webhook(
            rt, account, webhook_id, expire_previous_now=expire_previous_now, actor=_cli_actor()
        ),
    )
    _emit(data, as_json, _render_secret)


def _receiver_example() -> str:
    from importlib import resources

    return resources.files("vivix.webhooks").joinpath("receiver_example.txt").read_text("utf-8")


@webhooks_app.command("example")
def webhooks_example(as_json: JsonFlag = False) -> None:
    """Print a ~20-line webhook receiver (standard library only) that checks both
    signatures and the timestamp: `vivix webhooks example > receiver.py`, then
    `VIVIX_WEBHOOK_SECRET=whsec_… PORT=9000 python receiver.py`."""
    text = _receiver_example()
    if as_json:
        print(json.dumps({"example": text}))
    else:
        print(text, end="")


@webhooks_app.command("disable")
def webhooks_disable(
    account: str,
    webhook_id: str,
    reason: Annotated[str | None, typer.Option(help="Shown as disabled_reason.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Disable an endpoint (its pending deliveries wait until it is enabled again)."""
    data = _run(
        as_json,
        lambda rt: _admin_webhooks().disable_webhook(
            rt, account, webhook_id, reason=reason, actor=_cli_actor()
        ),
    )
    _emit(data, as_json, lambda d: _render_webhooks([d]))
