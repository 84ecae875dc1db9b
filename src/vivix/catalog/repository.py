"""Reads the shipped catalog file and the operator's file."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vivix.catalog.schemas import CatalogFile


class CatalogError(Exception):
    """The catalog data is invalid; the message says which file and model."""


def read_shipped_catalog() -> CatalogFile:
    text = resources.files("vivix").joinpath("catalog.d/models.toml").read_text("utf-8")
    return _parse(text, "shipped catalog")


def read_catalog_file(path: Path) -> CatalogFile:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc.strerror}") from None
    if path.suffix == ".json":
        import json

        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{path}: invalid JSON: {exc}") from None
        return _validate(data, str(path))
    return _parse(text, str(path))


def _parse(text: str, origin: str) -> CatalogFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{origin}: invalid TOML: {exc}") from None
    return _validate(data, origin)


def _validate(data: Any, origin: str) -> CatalogFile:
    try:
        return CatalogFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise CatalogError(f"{origin}: {problems}") from None
