"""Site data: what a hospital holds. Nothing in this package imports the rest of fedrad."""

from __future__ import annotations

from fedrad.data.base import SiteData, Split

__all__ = ["SiteData", "Split"]
