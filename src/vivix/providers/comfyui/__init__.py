"""Self-hosted ComfyUI adapter (workflow templates over ComfyUI's HTTP API)."""

from vivix.providers.comfyui.adapter import ComfyUiAdapter

__all__ = ["ComfyUiAdapter"]
