"""The change feed behind event streams (API.md §5.2): `feed` appends a row in the
transaction of every state or progress change, `hub` fans new rows out to this process's
streams, `repository` reads them back (resume after an id)."""
