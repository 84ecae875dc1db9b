"""The Studio's operator pages write the audit log as `studio:<email>` and read it back:
an account's page lists its changes, newest first, each field before → after."""

from __future__ import annotations

import html
import re

import httpx

from tests.studio.helpers import signed_in, studio_user
from vivix.admin import service as admin
from vivix.runtime import Runtime


def _rows(page: str) -> list[str]:
    table = page.split('id="changes"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1], re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", r)).split()) for r in rows]


async def test_the_account_page_lists_its_changes_with_who_and_before_after(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    operator = await studio_user(runtime, operator=True)
    customer = await studio_user(runtime, tier="free", credits=0)
    csrf = await signed_in(browser, operator)
    base = f"/operator/accounts/{customer.account_id}"
    granted = await browser.post(
        f"{base}/grant", data={"amount": "750", "reason": "pilot", "csrf_token": csrf}
    )
    assert granted.status_code == 303
    limits = await browser.post(f"{base}/limits", data={"tier": "standard", "csrf_token": csrf})
    assert limits.status_code == 303
    await admin.adjust_credits(runtime, customer.account, -50, "typo")  # another face

    rows = _rows((await browser.get(base)).text)
    who = f"studio:{operator.email}"
    assert rows[0].endswith("system credits.adjust balance 750 → 700")
    assert rows[1].endswith(f"{who} account.update tier free → standard")
    assert rows[2].endswith(f"{who} credits.grant balance 0 → 750")
    assert "account.create" in rows[-1]
    other = _rows((await browser.get(f"/operator/accounts/{operator.account_id}")).text)
    assert not any("credits.grant" in row for row in other)  # only this account's
