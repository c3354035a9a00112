"""Errors raised while loading or running a model (defined in :mod:`geoprobe.errors`, re-exported here)."""

from geoprobe.errors import (  # noqa: F401
    GatedModelError,
    ModelLoadError,
    ModelNotFoundError,
    OfflineModelError,
    SiteError,
    UnsupportedModelError,
)
