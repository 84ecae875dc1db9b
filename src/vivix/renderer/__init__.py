"""The procedural renderer: deterministic images, videos and audio from a prompt, a seed
and params (same inputs → identical bytes), offline, for development, demos, tests and
test keys. It is not an AI model. `render` is the entry point; `providers.local` is the
thin adapter that runs it for the worker."""


class RenderCanceled(Exception):
    """Raised by a render that noticed its `should_stop()`."""
