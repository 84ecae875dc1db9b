"""Usage: the wallet, spend per day (SVG drawn here) and per model, the ledger page by
page, and the whole ledger as CSV (streamed, with the running balance)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from vivix.accounts import repository as accounts_repository
from vivix.billing import repository as billing_repository
from vivix.kit.clock import iso, utcnow
from vivix.kit.errors import InvalidParams
from vivix.kit.http import runtime_of
from vivix.studio import chart
from vivix.studio.web import StudioRoute, require_viewer, web_of

router = APIRouter(route_class=StudioRoute)
CHART_DAYS = 30
LEDGER_PAGE = 50
EXPORT_SLICE = 1000
KIND_LABELS = {
    "grant": "Grant",
    "hold": "Hold",
    "capture": "Charge",
    "release": "Release",
    "adjustment": "Adjustment",
}
CSV_COLUMNS = (
    "entry_id",
    "created_at",
    "kind",
    "amount",
    "balance_after",
    "generation_id",
    "model",
    "reason",
)


@router.get("/usage")
async def usage_page(request: Request) -> Response:
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    before = _before_id(request.query_params.get("before"))
    today = utcnow().date()
    first_day = today - timedelta(days=CHART_DAYS - 1)
    async with runtime.db.read() as session:
        account = await accounts_repository.find_account(session, viewer.account.id)
        assert account is not None
        per_day = await billing_repository.spend_per_day(
            session,
            account.id,
            utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
            - timedelta(days=CHART_DAYS - 1),
        )
        per_model = await billing_repository.spend_per_model(
            session, account.id, account.cycle_started_at
        )
        entries = await billing_repository.ledger_page(
            session, account.id, before_id=before, limit=LEDGER_PAGE + 1
        )
    bars = [
        chart.Bar(day, per_day.get(day, 0))
        for day in (first_day + timedelta(days=n) for n in range(CHART_DAYS))
    ]
    spent = sum(int(row.credits or 0) for row in per_model)
    names = {m.slug: m.spec.name for m in runtime.catalog.all()}
    page = entries[:LEDGER_PAGE]
    context = {
        "active": "usage",
        "account": account,
        "limits": viewer.limits,
        "days_to_reset": max(0, (account.cycle_resets_at - utcnow()).days),
        "chart": chart.spend_per_day_svg(
            bars, title=f"Credits spent per day, last {CHART_DAYS} days"
        ),
        "chart_total": sum(b.value for b in bars),
        "chart_days": CHART_DAYS,
        "per_model": [
            {
                "name": names.get(row.model, row.model),
                "generations": int(row.generations),
                "credits": int(row.credits or 0),
                "share": round(100 * int(row.credits or 0) / spent) if spent else 0,
            }
            for row in per_model
        ],
        "entries": page,
        "kinds": KIND_LABELS,
        "model_names": names,
        "next_url": (
            "/usage?" + urlencode({"before": page[-1].id}) + "#ledger"
            if len(entries) > LEDGER_PAGE
            else None
        ),
        "first_url": "/usage#ledger" if before is not None else None,
    }
    return web_of(request).page(request, "usage.html", context, viewer=viewer)


def _before_id(raw: str | None) -> int | None:
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidParams("before", "must be a ledger entry id from this page's links")
    return int(raw)


def _cell(text: str) -> str:
    """Free text for a spreadsheet: a leading =, +, - or @ would make it a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@router.get("/usage/ledger.csv")
async def ledger_csv(request: Request) -> Response:
    """Every entry of the account, oldest first, with the balance after each: the last
    `balance_after` is the available balance, and `amount` sums to it."""
    viewer = await require_viewer(request)
    runtime = runtime_of(request)
    account_id = viewer.account.id

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        balance = 0
        after = 0
        while True:
            async with runtime.db.read() as session:
                batch = await billing_repository.ledger_in_order(
                    session, account_id, after_id=after, limit=EXPORT_SLICE
                )
            for entry in batch:
                balance += entry.amount
                writer.writerow(
                    (
                        entry.id,
                        iso(entry.created_at),
                        entry.kind,
                        entry.amount,
                        balance,
                        entry.generation_id or "",
                        entry.model or "",
                        _cell(entry.reason or ""),
                    )
                )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(batch) < EXPORT_SLICE:
                return
            after = batch[-1].id

    filename = f"vivix-ledger-{viewer.account_name}-{utcnow():%Y%m%d}.csv"
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
