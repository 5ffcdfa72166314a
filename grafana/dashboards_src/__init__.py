"""Dashboards as code (grafana-foundation-sdk, pinned in pyproject.toml); run grafana/generate.py."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import exporter_health, model_detail, overview


def build_all() -> dict[str, Any]:
    """Every dashboard as its JSON model, by uid."""
    import json

    out = {}
    for module in (overview, model_detail, exporter_health):
        model = module.build().build()
        out[module.UID] = json.loads(json.dumps(model, cls=JSONEncoder))
    return out
