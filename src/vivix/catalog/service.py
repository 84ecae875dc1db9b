"""The catalog: which models exist, their params, prices and provider routes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vivix.catalog import params as param_rules
from vivix.catalog import pricing
from vivix.catalog.repository import CatalogError, read_catalog_file, read_shipped_catalog
from vivix.catalog.schemas import CreditsBand, ModelOut, ModelSpec
from vivix.providers.registry import KNOWN_PROVIDERS


@dataclass(frozen=True, slots=True)
class CatalogModel:
    spec: ModelSpec
    compact_params: dict[str, dict[str, Any]]
    params_schema: dict[str, Any]
    example_request: dict[str, Any]

    @property
    def slug(self) -> str:
        return self.spec.slug


class Catalog:
    def __init__(self, specs: list[ModelSpec]) -> None:
        self._models: dict[str, CatalogModel] = {}
        for spec in specs:
            for route in spec.routes:
                if route.provider not in KNOWN_PROVIDERS:
                    raise CatalogError(
                        f"{spec.slug}: unknown provider {route.provider!r}; "
                        f"known: {', '.join(sorted(KNOWN_PROVIDERS))}"
                    )
            try:
                pricing.check_coverage(spec, spec.pricing)
            except ValueError as exc:
                raise CatalogError(str(exc)) from None
            example = spec.example_request or {
                "model": spec.slug,
                "prompt": "a quiet harbour at dusk",
            }
            # /models hands the example to clients as a ready request: it must name this model.
            if example.get("model") != spec.slug:
                raise CatalogError(
                    f"{spec.slug}: example_request is invalid: its `model` must be {spec.slug!r}"
                )
            try:
                param_rules.validate_params(spec, example)
                param_rules.validate_metadata(example.get("metadata"))
            except Exception as exc:
                raise CatalogError(f"{spec.slug}: example_request is invalid: {exc}") from None
            self._models[spec.slug] = CatalogModel(
                spec=spec,
                compact_params={
                    name: param_rules.compact_descriptor(p) for name, p in spec.params.items()
                },
                params_schema=param_rules.json_schema(spec),
                example_request=example,
            )

    @classmethod
    def load(cls, operator_path: Path | None = None) -> Catalog:
        shipped = read_shipped_catalog()
        specs = {m.slug: m for m in shipped.models}
        if operator_path is not None:
            extra = read_catalog_file(operator_path)
            if extra.mode == "replace":
                specs = {}
            specs.update({m.slug: m for m in extra.models})
        return cls(list(specs.values()))

    def get(self, slug: str) -> CatalogModel | None:
        return self._models.get(slug)

    def all(self) -> list[CatalogModel]:
        return list(self._models.values())

    def default_allowlist(self, tier: str) -> list[str]:
        return [m.slug for m in self._models.values() if tier in m.spec.default_tiers]

    def describe(
        self,
        model: CatalogModel,
        raw_override: dict[str, Any] | None,
        *,
        available: bool = True,
        unavailable_reason: Literal["not_configured", "circuit_open"] | None = None,
    ) -> ModelOut:
        low, high = pricing.credits_band(model.spec, pricing.parse_override(raw_override))
        return ModelOut(
            slug=model.slug,
            name=model.spec.name,
            category=model.spec.category,
            creator=model.spec.creator,
            description=model.spec.description,
            params=model.compact_params,
            params_schema=model.params_schema,
            credits_band=CreditsBand(min=low, max=high),
            example_request=model.example_request,
            available=available,
            unavailable_reason=unavailable_reason,
        )
