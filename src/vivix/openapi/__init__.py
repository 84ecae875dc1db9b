"""The OpenAPI 3.1 document of the public API: the contract clients are generated from,
`/docs` and `/redoc` render, and `docs/` is written from."""
