"""API keys (API.md §4): format, hashed storage, listing by prefix, immediate soft
revocation, and vvx_test_ keys that render locally and charge nothing."""

from __future__ import annotations

import hashlib
import hmac
import re

import httpx
import pytest
from sqlalchemy import select, text, update

from tests.audit import assert_ledger_consistent, ledger_entry_count
from tests.factories import account_with_key
from vivix.admin import service as admin
from vivix.app import create_app
from vivix.kit.errors import AdminConflict, AdminNotFound
from vivix.models import ApiKey, Base, Generation
from vivix.runtime import Runtime

LIVE_KEY = re.compile(r"^vvx_live_[0-9A-Za-z]{32}$")
TEST_KEY = re.compile(r"^vvx_test_[0-9A-Za-z]{32}$")
IMAGE = {"model": "vivix-local-image", "prompt": "a lighthouse in fog", "resolution": "4K"}


async def test_live_key_is_vvx_live_and_32_base62_characters(runtime: Runtime) -> None:
    await admin.create_account(runtime, "keys-format")
    keys = [(await admin.create_key(runtime, "keys-format"))["key"] for _ in range(5)]
    for key in keys:
        assert len(key) == 41
        assert LIVE_KEY.match(key), key
    assert len(set(keys)) == 5


async def test_test_key_is_vvx_test_and_32_base62_characters(runtime: Runtime) -> None:
    await admin.create_account(runtime, "keys-test-format")
    created = await admin.create_key(runtime, "keys-test-format", test=True)
    assert len(created["key"]) == 41
    assert TEST_KEY.match(created["key"])
    assert created["test"] is True
    assert created["prefix"] == created["key"][:15]
    assert created["prefix"].startswith("vvx_test_")


async def test_only_a_keyed_hash_of_the_key_is_stored(runtime: Runtime) -> None:
    account = await admin.create_account(runtime, "keys-hash")
    created = await admin.create_key(runtime, "keys-hash", name="ci")
    key = created["key"]
    async with runtime.db.read() as session:
        row = (await session.execute(select(ApiKey).where(ApiKey.id == created["id"]))).scalar_one()
        dumps = []
        for table in Base.metadata.sorted_tables:
            for record in (await session.execute(select(table))).all():
                dumps.append(repr(tuple(record)))
    expected = hmac.new(runtime.secret.encode(), key.encode(), hashlib.sha256).hexdigest()
    assert row.key_hash == expected
    assert row.prefix == key[:15]
    assert row.account_id == account["id"]
    # Neither the key nor its secret part is anywhere in the database.
    everything = "\n".join(dumps)
    assert key not in everything
    assert key[9:] not in everything
    assert key[15:] not in everything


async def test_a_different_server_secret_does_not_accept_the_key(runtime: Runtime) -> None:
    acct = await account_with_key(runtime)
    runtime.secret = "another-secret"
    app = create_app(runtime.settings, runtime=runtime)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/api/v1/credits", headers=acct.headers)
    assert response.status_code == 401
    assert response.json()["error"] == "KEY_INVALID"


async def test_keys_are_listed_by_prefix_and_never_in_full(runtime: Runtime) -> None:
    await admin.create_account(runtime, "keys-list")
    first = await admin.create_key(runtime, "keys-list", name="laptop")
    second = await admin.create_key(runtime, "keys-list", name="ci", test=True)
    shown = await admin.show_account(runtime, "keys-list")
    listed = {k["id"]: k for k in shown["keys"]}
    assert set(listed) == {first["id"], second["id"]}
    for created in (first, second):
        entry = listed[created["id"]]
        assert entry["prefix"] == created["key"][:15]
        assert len(entry["prefix"]) == 15
        assert "key" not in entry
        assert created["key"] not in repr(shown)
    assert listed[first["id"]]["name"] == "laptop"
    assert listed[second["id"]]["test"] is True
    assert listed[first["id"]]["revoked_at"] is None


async def test_revocation_by_prefix_is_immediate(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    assert (await client.get("/api/v1/credits", headers=acct.headers)).status_code == 200
    revoked = await admin.revoke_key(runtime, acct.key[:15])
    assert revoked["revoked_at"] is not None
    response = await client.get("/api/v1/credits", headers=acct.headers)
    assert response.status_code == 401
    assert response.json()["error"] == "KEY_REVOKED"


async def test_revocation_by_id_is_immediate_and_spares_the_other_keys(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime)
    spare = await admin.create_key(runtime, acct.name)
    shown = await admin.show_account(runtime, acct.name)
    doomed = next(k for k in shown["keys"] if k["prefix"] == acct.key[:15])
    await admin.revoke_key(runtime, doomed["id"])
    response = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert response.status_code == 401
    assert response.json()["error"] == "KEY_REVOKED"
    still = await client.get("/api/v1/credits", headers={"Authorization": f"Bearer {spare['key']}"})
    assert still.status_code == 200


async def test_revocation_is_soft_and_idempotent(runtime: Runtime) -> None:
    acct = await account_with_key(runtime)
    first = await admin.revoke_key(runtime, acct.key[:15])
    second = await admin.revoke_key(runtime, acct.key[:15])
    assert second["revoked_at"] == first["revoked_at"]
    async with runtime.db.read() as session:
        rows = list((await session.execute(select(ApiKey))).scalars())
    assert len(rows) == 1
    assert rows[0].id == first["id"]
    assert rows[0].revoked_at is not None
    shown = await admin.show_account(runtime, acct.name)
    assert shown["keys"][0]["revoked_at"] == first["revoked_at"]


async def test_revoking_an_unknown_or_ambiguous_key_is_refused(runtime: Runtime) -> None:
    acct = await account_with_key(runtime)
    other = await admin.create_key(runtime, acct.name)
    with pytest.raises(AdminNotFound):
        await admin.revoke_key(runtime, "vvx_live_zzzzzz")
    # Two keys sharing a listed prefix (6 random characters) can only be told apart by id.
    async with runtime.db.transaction() as session:
        await session.execute(
            update(ApiKey).where(ApiKey.id == other["id"]).values(prefix=acct.key[:15])
        )
    with pytest.raises(AdminConflict):
        await admin.revoke_key(runtime, acct.key[:15])
    assert (await admin.revoke_key(runtime, other["id"]))["revoked_at"] is not None


async def test_test_key_renders_locally_and_charges_nothing(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=0, test_key=True)
    entries = await ledger_entry_count(runtime)
    for body in (
        IMAGE,
        {**IMAGE, "number_results": 4},
        # No provider credentials: a live key would get 503; a test key renders locally.
        {"model": "grok-imagine-image-quality", "prompt": "a lighthouse"},
        {"model": "wan-2.7-text-to-video", "prompt": "waves", "duration": 10},
    ):
        response = await client.post("/api/v1/generate", json=body, headers=acct.headers)
        assert response.status_code == 201, response.text
        assert response.json()["credits_estimate"] == 0
        assert response.headers["x-credits-balance"] == "0"
    assert await ledger_entry_count(runtime) == entries
    async with runtime.db.read() as session:
        flags = {g.is_test for g in (await session.execute(select(Generation))).scalars()}
    assert flags == {True}
    credits = (await client.get("/api/v1/credits", headers=acct.headers)).json()
    assert credits["balance"] == 0
    assert credits["held"] == 0
    await assert_ledger_consistent(runtime)


async def test_test_key_has_the_same_checks_and_limits(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, test_key=True, concurrent_jobs=1, calls_per_minute=4)
    assert (await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)).is_success
    busy = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert busy.json()["error"] == "CONCURRENCY_LIMIT"
    bad = await client.post(
        "/api/v1/generate", json={**IMAGE, "resolution": "9K"}, headers=acct.headers
    )
    assert bad.json()["error"] == "INVALID_PARAMS"
    await client.get("/api/v1/credits", headers=acct.headers)
    limited = await client.get("/api/v1/credits", headers=acct.headers)
    assert limited.json()["error"] == "RATE_LIMIT"

    locked = await account_with_key(runtime, tier="standard", test_key=True)
    response = await client.get("/api/v1/models", headers=locked.headers)
    assert response.json()["error"] == "TIER_LOCKED"


async def test_live_and_test_keys_of_one_account_share_its_wallet(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    acct = await account_with_key(runtime, credits=100)
    test_key = (await admin.create_key(runtime, acct.name, test=True))["key"]
    test_headers = {"Authorization": f"Bearer {test_key}"}
    live = await client.post("/api/v1/generate", json=IMAGE, headers=acct.headers)
    assert live.json()["credits_estimate"] == 8
    sandbox = await client.post("/api/v1/generate", json=IMAGE, headers=test_headers)
    assert sandbox.json()["credits_estimate"] == 0
    assert sandbox.headers["x-credits-balance"] == "92"


async def test_key_table_has_no_plaintext_column(runtime: Runtime) -> None:
    async with runtime.db.read() as session:
        columns = (await session.execute(text("SELECT * FROM api_keys LIMIT 0"))).keys()
    assert set(columns) == {
        "id",
        "account_id",
        "name",
        "prefix",
        "key_hash",
        "is_test",
        "created_at",
        "revoked_at",
    }
