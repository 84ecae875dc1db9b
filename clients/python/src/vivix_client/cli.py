"""`vivix-client`: the API from a shell (needs the `cli` extra: rich).

Exit codes: 0 ok, 1 other error, 2 bad request or usage, 3 authentication/permission,
4 not enough credits, 5 not found, 6 conflict, 7 network, 8 rate/concurrency limit,
9 server or provider failure, 10 the generation failed or was canceled, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vivix_client import errors
from vivix_client.client import Vivix
from vivix_client.models import Generation

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

USAGE_ERROR = 2
INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vivix-client",
        description="Generate images, video and audio through a Vivix server.",
        epilog="Exit codes: 0 ok, 1 other, 2 bad request/usage, 3 auth/permission, 4 credits, "
        "5 not found, 6 conflict, 7 network, 8 rate limit, 9 server/provider, "
        "10 generation failed/canceled, 130 interrupted.",
    )
    parser.add_argument("--api-key", help="API key (default: $VIVIX_API_KEY)")
    parser.add_argument(
        "--base-url", help="server URL (default: $VIVIX_BASE_URL or http://127.0.0.1:8000)"
    )
    parser.add_argument(
        "--max-retries", type=int, default=3, help="retries of failed calls (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="submit a generation (and wait for it)")
    generate.add_argument("model", help="model slug (see `vivix-client models`)")
    generate.add_argument("--prompt", "-p", required=True)
    generate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model param, e.g. aspect_ratio=16:9 or number_results=2 (JSON values allowed)",
    )
    generate.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    generate.add_argument("--idempotency-key", help="make resubmitting this exact call safe")
    _waiting_options(generate)

    get = commands.add_parser("get", help="show a generation (reattach with --wait)")
    get.add_argument("generation_id")
    _waiting_options(get)

    listing = commands.add_parser("list", help="recent generations, newest first")
    listing.add_argument(
        "--status", choices=["pending", "processing", "completed", "failed", "canceled"]
    )
    listing.add_argument("--model")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")

    cancel = commands.add_parser("cancel", help="cancel a pending or processing generation")
    cancel.add_argument("generation_id")

    commands.add_parser("models", help="the models this key can call")
    commands.add_parser("credits", help="balance and limits")
    for sub in commands.choices.values():
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
        )
    return parser


def _waiting_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--wait", "-w", action="store_true", help="wait until it is finished, with a progress bar"
    )
    command.add_argument(
        "--out", "-o", type=Path, help="save the outputs into this directory (implies --wait)"
    )
    command.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait at most (default 900)"
    )


def _key_values(pairs: list[str], option: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(_usage(f"{option} takes KEY=VALUE, got {pair!r}"))
        try:
            values[key] = json.loads(raw) if option == "--param" else raw
        except ValueError:
            values[key] = raw  # a plain string, e.g. 16:9
    return values


def _usage(message: str) -> int:
    print(f"vivix-client: error: {message}", file=sys.stderr)
    return USAGE_ERROR


class _Ui:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            self._out = _console(stderr=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = _console(stderr=True)
        return self._err

    def emit(self, data: Any, render: Any) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, default=str))
        else:
            render()


def _console(*, stderr: bool) -> Console:
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - depends on the install
        raise SystemExit(
            _usage("the command line needs rich: pip install 'vivix-client[cli]'")
        ) from None
    return Console(stderr=stderr, highlight=False)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=False)


def _show_generation(ui: _Ui, generation: Generation, saved: list[Path]) -> None:
    data = _dump(generation)
    if saved:
        data["saved"] = [str(p) for p in saved]

    def render() -> None:
        ui.out.print(
            f"[bold]{generation.generation_id}[/bold]  {generation.model}  {_status_text(generation)}"
        )
        if generation.status == "completed":
            ui.out.print(
                f"credits used: {generation.credits_used} (estimate {generation.credits_estimate})"
            )
            for url in generation.output_urls:
                ui.out.print(url, soft_wrap=True)
        elif generation.status == "failed":
            ui.out.print(f"[red]{generation.error}[/red]: {generation.message}")
        else:
            ui.out.print(f"credits held: {generation.credits_estimate}")
        for path in saved:
            ui.out.print(f"saved {path}", soft_wrap=True)

    ui.emit(data, render)


def _status_text(generation: Generation) -> str:
    if generation.status == "pending":
        position = generation.queue_position
        return f"queued (#{position})" if position else "queued"
    if generation.status == "processing":
        return (
            f"rendering {generation.progress:.0%}"
            if generation.progress is not None
            else "rendering"
        )
    colour = {"completed": "green", "failed": "red", "canceled": "yellow"}[generation.status]
    return f"[{colour}]{generation.status}[/{colour}]"


def _wait_with_progress(
    ui: _Ui, client: Vivix, generation: Generation, timeout: float
) -> Generation:
    """Waits, drawing a progress bar on stderr: queue position while pending, the render's
    progress while processing, and the server's ETA when it has one."""
    if ui.as_json:
        return client.wait(generation.generation_id, timeout=timeout, raise_on_failure=False)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=ui.err, transient=False) as progress:
        task = progress.add_task(_plain_status(generation), total=1.0, eta="…")

        def update(current: Generation) -> None:
            _advance(progress, task, current)

        update(generation)
        finished = client.wait(
            generation.generation_id, on_progress=update, timeout=timeout, raise_on_failure=False
        )
        update(finished)
    return finished


def _advance(progress: Progress, task: TaskID, generation: Generation) -> None:
    done = 1.0 if generation.status == "completed" else (generation.progress or 0.0)
    eta = "…"
    if generation.eta_ms is not None:
        eta = f"{generation.eta_ms / 1000:.0f}s"
    elif generation.finished:
        eta = "0s"
    progress.update(task, completed=done, description=_plain_status(generation), eta=eta)


def _plain_status(generation: Generation) -> str:
    if generation.status == "pending":
        position = generation.queue_position
        return f"{generation.model}: queued" + (f" #{position}" if position else "")
    if generation.status == "processing":
        return f"{generation.model}: rendering"
    return f"{generation.model}: {generation.status}"


def _finish(ui: _Ui, client: Vivix, generation: Generation, args: argparse.Namespace) -> int:
    saved: list[Path] = []
    if args.wait or args.out:
        generation = _wait_with_progress(ui, client, generation, args.timeout)
        if args.out and generation.succeeded:
            saved = client.download(generation, args.out)
    _show_generation(ui, generation, saved)
    if generation.finished and not generation.succeeded:
        return errors.GenerationFailed.exit_code
    return 0


def _models(ui: _Ui, client: Vivix) -> int:
    catalog = client.catalog()

    def render() -> None:
        from rich.table import Table

        table = Table("slug", "category", "credits", "available")
        table.columns[0].no_wrap = True  # what users copy into `generate`
        for model in catalog.models:
            state = (
                "[green]yes[/green]"
                if model.available
                else f"[red]no[/red]: {model.unavailable_reason}"
            )
            band = model.credits_band
            table.add_row(model.slug, model.category, f"{band.min}-{band.max}", state)
        ui.out.print(table)
        ui.out.print(f"tier {catalog.tier}, balance {catalog.credits_balance} credits")

    ui.emit(_dump(catalog), render)
    return 0


def _list(ui: _Ui, client: Vivix, args: argparse.Namespace) -> int:
    generations = list(
        client.list(
            status=args.status,
            model=args.model,
            limit=args.limit,
            page_size=min(100, max(1, args.limit)),
        )
    )

    def render() -> None:
        from rich.table import Table

        table = Table("id", "model", "status", "credits", "created")
        table.columns[0].no_wrap = True
        for g in generations:
            credits = g.credits_used if g.credits_used is not None else g.credits_estimate
            table.add_row(
                g.generation_id, g.model, _status_text(g), str(credits), str(g.created_at)
            )
        ui.out.print(table)

    ui.emit([_dump(g) for g in generations], render)
    return 0


def _credits(ui: _Ui, client: Vivix) -> int:
    wallet = client.credits()

    def render() -> None:
        ui.out.print(f"balance {wallet.balance} (held {wallet.held}), tier {wallet.tier}")
        ui.out.print(
            f"this cycle: spent {wallet.spent_this_cycle}, granted {wallet.granted_this_cycle}; resets {wallet.cycle_resets_at}"
        )
        limits = wallet.rate_limit
        ui.out.print(
            f"limits: {limits.calls_per_minute} calls/min, {limits.concurrent_jobs} concurrent jobs"
        )

    ui.emit(_dump(wallet), render)
    return 0


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    ui = _Ui(args.json)
    try:
        with Vivix(args.api_key, base_url=args.base_url, max_retries=args.max_retries) as client:
            if args.command == "generate":
                params = _key_values(args.param, "--param")
                metadata = _key_values(args.metadata, "--metadata") or None
                generation = client.generate(
                    args.model,
                    args.prompt,
                    metadata=metadata,
                    idempotency_key=args.idempotency_key,
                    **params,
                )
                return _finish(ui, client, generation, args)
            if args.command == "get":
                return _finish(ui, client, client.get(args.generation_id), args)
            if args.command == "cancel":
                _show_generation(ui, client.cancel(args.generation_id), [])
                return 0
            if args.command == "list":
                return _list(ui, client, args)
            if args.command == "models":
                return _models(ui, client)
            return _credits(ui, client)
    except errors.APIError as error:
        return _report_error(ui, error, {"error": error.code, "status": error.status, **error.body})
    except errors.VivixError as error:
        return _report_error(ui, error, {"error": type(error).__name__, "message": str(error)})


def _report_error(ui: _Ui, error: errors.VivixError, data: dict[str, Any]) -> int:
    if ui.as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(f"vivix-client: error: {error}", file=sys.stderr)
    return error.exit_code


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
