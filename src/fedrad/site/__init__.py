"""A hospital's side: the Site that answers instructions (handler.py) and its local training (training.py)."""

from __future__ import annotations

from fedrad.site.handler import Site, load_weights, model_weights
from fedrad.site.training import SiteError, train_epochs

__all__ = ["Site", "SiteError", "load_weights", "model_weights", "train_epochs"]
