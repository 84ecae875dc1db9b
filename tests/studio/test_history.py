"""History: the account's generations from both surfaces, filters in the URL, cursor
paging, the detail page and its actions."""

from __future__ import annotations

import ast
import html as html_lib
import json
import re

import httpx

from tests.studio.helpers import signed_in, studio_user
from vivix.admin import service as admin
from vivix.runtime import Runtime

STUDIO_IMAGE = {"model": "vivix-local-image", "prompt": "studio lighthouse", "number_results": "1"}


def _tile_ids(html: str) -> list[str]:
    return re.findall(r'class="tile" href="/history/([0-9a-f-]{36})"', html)


async def test_filters_and_paging_keep_their_state_in_the_url(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, tier="pro", credits=1000, concurrent_jobs=100)
    csrf = await signed_in(browser, user)
    studio_ids = []
    for _ in range(3):
        response = await browser.post("/generate", data={**STUDIO_IMAGE, "csrf_token": csrf})
        studio_ids.append(response.headers["location"].rsplit("/", 1)[1])
    key = (await admin.create_key(runtime, user.account))["key"]
    api_ids = []
    async with httpx.AsyncClient(transport=browser._transport, base_url="http://testserver") as api:
        for n in range(24):
            response = await api.post(
                "/api/v1/generate",
                json={"model": "vivix-local-audio", "prompt": f"api tune {n}", "duration": 1},
                headers={"Authorization": f"Bearer {key}"},
            )
            api_ids.append(response.json()["generation_id"])
    first = await browser.get("/history")
    assert _tile_ids(first.text) == list(reversed(api_ids))  # newest first, 24 a page
    older = re.search(r'href="(/history\?cursor=[^"]+)"', first.text)
    assert older is not None
    second = await browser.get(older.group(1).replace("&amp;", "&"))
    assert _tile_ids(second.text) == list(reversed(studio_ids))
    assert "Older" not in second.text.split('class="pager"')[1]

    studio_only = await browser.get("/history?source=studio")
    assert _tile_ids(studio_only.text) == list(reversed(studio_ids))
    assert 'value="studio" selected' in studio_only.text
    audio = await browser.get("/history?category=audio")
    assert _tile_ids(audio.text) == list(reversed(api_ids))
    pending = await browser.get("/history?status=pending")
    paged = re.search(r'href="(/history\?[^"]*cursor=[^"]+)"', pending.text)
    assert paged is not None
    assert "status=pending" in paged.group(1)
    rest = await browser.get(paged.group(1).replace("&amp;", "&"))
    assert _tile_ids(rest.text) == list(reversed(studio_ids))
    none = await browser.get("/history?model=vivix-local-video")
    assert _tile_ids(none.text) == []
    assert "Nothing matches these filters" in none.text
    future = await browser.get("/history?from=2999-01-01")
    assert _tile_ids(future.text) == []
    junk = await browser.get("/history?status=exploded&source=fax")
    assert junk.status_code == 200
    assert len(_tile_ids(junk.text)) == 24


async def test_detail_shows_params_and_offers_rerun_cancel_and_snippets(
    runtime: Runtime, browser: httpx.AsyncClient
) -> None:
    user = await studio_user(runtime, credits=100, concurrent_jobs=10)
    csrf = await signed_in(browser, user)
    response = await browser.post(
        "/generate", data={**STUDIO_IMAGE, "seed": "42", "csrf_token": csrf}
    )
    generation_id = response.headers["location"].rsplit("/", 1)[1]
    detail = await browser.get(f"/history/{generation_id}")
    assert detail.status_code == 200
    html = detail.text
    assert "studio lighthouse" in html
    assert 'id="snippet-curl"' in html
    assert "/api/v1/generate" in html
    assert "&#34;seed&#34;: 42" in html or '"seed": 42' in html
    # The snippets are real code for the same request: the cURL body is JSON, the Python
    # one a literal, and both equal the generation's model and params.
    body = {"model": "vivix-local-image", "prompt": "studio lighthouse", "seed": 42}
    curl = html_lib.unescape(
        re.search(r'id="snippet-curl"><code>(.*?)</code>', html, re.S).group(1)
    )
    sent = json.loads(curl.split("-d '", 1)[1].rsplit("'", 1)[0])
    python = html_lib.unescape(
        re.search(r'id="snippet-python"><code>(.*?)</code>', html, re.S).group(1)
    )
    call = ast.parse(python).body[-3].value  # response = requests.post(...)
    literal = next(k.value for k in call.keywords if k.arg == "json")
    assert ast.literal_eval(literal) == sent
    assert {k: sent[k] for k in body} == body
    rerun = await browser.post(f"/history/{generation_id}/rerun", data={"csrf_token": csrf})
    assert rerun.status_code == 303
    new_id = rerun.headers["location"].rsplit("/", 1)[1]
    assert new_id != generation_id
    edit = await browser.get(f"/generate?from={generation_id}")
    assert 'value="42"' in edit.text
    assert "studio lighthouse" in edit.text
    cancel = await browser.post(f"/history/{new_id}/cancel", data={"csrf_token": csrf})
    assert cancel.status_code == 303
    assert (await admin.show_account(runtime, user.account))["held"] == 2  # the first one only
    again = await browser.post(f"/history/{new_id}/cancel", data={"csrf_token": csrf})
    assert again.status_code == 409
    assert "already canceled" in again.text
