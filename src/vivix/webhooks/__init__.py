"""Webhooks: endpoints per account, the delivery outbox and its sender (API.md §5.1)."""
