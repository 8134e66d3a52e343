"""fedrad: federated learning for medical imaging. The model travels, the data does not."""

from __future__ import annotations

__version__ = "0.1.0"
