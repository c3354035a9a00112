"""Errors raised while loading or running a model; all are one-line :class:`GeoprobeError` subclasses."""

from __future__ import annotations

from geoprobe.errors import GeoprobeError


class ModelLoadError(GeoprobeError):
    """A model that cannot be loaded (missing, unreadable, unsupported)."""


class ModelNotFoundError(ModelLoadError):
    """No local folder/file of that name and no Hugging Face repository (or revision) of that id."""


class OfflineModelError(ModelLoadError):
    """A hub model that is not in the local cache while offline (``HF_HUB_OFFLINE=1`` or no network)."""


class GatedModelError(ModelLoadError):
    """A gated or private hub model that needs an access token / accepted licence."""


class UnsupportedModelError(ModelLoadError):
    """An architecture this backend cannot hook (or a run folder with a non-HF architecture)."""


class SiteError(GeoprobeError, ValueError):
    """An unknown activation site, a site the model does not have, or a layer out of range."""
