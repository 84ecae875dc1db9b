"""outputs keep storage keys, URLs are built at read time

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00

Stored output URLs froze the public URL of the day they were rendered; a changed
VIVIX_PUBLIC_URL (or storage public URL) left them pointing at the old host. Each stored
output now keeps its storage key (`<generation id>/<token>/<index>.<ext>`, always the last
three segments of the URL it was served at) and the API builds the URL when it answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 500
_generations = sa.table(
    "generations",
    sa.column("id", sa.String(36)),
    sa.column("outputs", sa.JSON().with_variant(JSONB(), "postgresql")),
)


def _key_of(url: str) -> str:
    return "/".join(urlsplit(url).path.split("/")[-3:])


def _rewrite(convert: Any) -> None:
    bind = op.get_bind()
    after = ""
    while True:
        rows = bind.execute(
            sa.select(_generations.c.id, _generations.c.outputs)
            .where(_generations.c.outputs.is_not(None), _generations.c.id > after)
            .order_by(_generations.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        for generation_id, outputs in rows:
            changed = [convert(dict(o)) for o in outputs or []]
            if changed != outputs:
                bind.execute(
                    _generations.update()
                    .where(_generations.c.id == generation_id)
                    .values(outputs=changed)
                )
        after = rows[-1][0]


def _to_key(output: dict[str, Any]) -> dict[str, Any]:
    url = output.pop("url", None)
    if "key" not in output and isinstance(url, str):
        output["key"] = _key_of(url)
    return output


def upgrade() -> None:
    _rewrite(_to_key)


def downgrade() -> None:
    # The public URL of the day is unknown here: rebuild the default /files/ form, relative.
    def to_url(output: dict[str, Any]) -> dict[str, Any]:
        key = output.pop("key", None)
        if "url" not in output and isinstance(key, str):
            output["url"] = f"/files/{key}"
        return output

    _rewrite(to_url)
