"""Operating Vivix: health and readiness, metrics, retention, storage usage."""
