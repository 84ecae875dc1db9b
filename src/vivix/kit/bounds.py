"""Upper bounds of every number an operator sets (CLI, admin API, settings, catalog).

Without them a grant of 2^63 credits or a limit of 10^30 calls a minute got as far as the
database (or Redis) and failed there with a 500 — and a later customer submit with it.
Each bound is far above any real use and keeps every sum of credits inside 64 bits; a
value outside it is refused with 422 INVALID_PARAMS naming the field, changing nothing.
"""

from __future__ import annotations

# One grant, opening balance or monthly cycle grant.
MAX_CREDIT_AMOUNT = 10**12
# What one wallet may hold (available + held): a grant past it is refused. Every ledger
# sum then stays far below 2^63.
MAX_BALANCE = 10**15
# Rate and concurrency limits per account (tier defaults and per-account overrides).
MAX_CALLS_PER_MINUTE = 1_000_000
MAX_CONCURRENT_JOBS = 100_000
# One pricing row: credits per result and per second.
MAX_PRICE_CREDITS = 10**9
