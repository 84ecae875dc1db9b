"""The Studio: the browser surface on the same wallet (STUDIO.md)."""
