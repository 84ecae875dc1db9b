"""The app's start-up (its lifespan)."""

from __future__ import annotations

import gc

from vivix.app import create_app
from vivix.runtime import Runtime


async def test_start_up_moves_what_it_built_out_of_the_cyclic_collectors_sight(
    runtime: Runtime,
) -> None:
    app = create_app(runtime.settings, runtime=runtime)
    try:
        async with app.router.lifespan_context(app):
            # Full collections then scan only what requests leave behind (bench/README.md).
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()  # this test process goes on with other tests
