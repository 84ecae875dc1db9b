"""The output store: rendered files over obstore (local directory, memory, S3) and `/files`."""
