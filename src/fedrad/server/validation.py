"""Update validation: every incoming update is checked before it touches the global model.

A reply's weights must carry exactly the names of the model the site was sent, with the same
shapes and dtypes, finite values, a positive example count, and (optionally) an update whose
L2 distance from the sent model stays under a bound. A failing update is rejected with a reason
that names the site and the tensor; the orchestrator records it as that site's failure and the
round goes on with the others. The check is the same for every transport.

Example:
    >>> reason = UpdateValidator(max_update_norm=100.0).check("hosp-a", received, sent, 120)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrad.types import Weights


@dataclass(frozen=True)
class UpdateValidator:
    max_update_norm: float | None = None  # L2 norm of (received - sent) over float entries; None: no bound
    max_num_examples: int = 10_000_000  # a site claiming more would outweigh everyone in the average

    def __post_init__(self) -> None:
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be positive, got {self.max_update_norm}")
        if self.max_num_examples < 1:
            raise ValueError(f"max_num_examples must be at least 1, got {self.max_num_examples}")

    def check(self, site_id: str, received: Weights, sent: Weights, num_examples: int) -> str | None:
        """None if the update may be aggregated, else why not (one line naming the site)."""
        reason = self._problem(received, sent, num_examples)
        return None if reason is None else f"site {site_id}: update rejected: {reason}"

    def _problem(self, received: Weights, sent: Weights, num_examples: int) -> str | None:
        # 1) the example count weights the average: it must be sane
        if not 0 < num_examples <= self.max_num_examples:
            return f"num_examples {num_examples} outside [1, {self.max_num_examples}]"
        # 2) the same tensor names as the model that was sent
        missing, unexpected = sorted(set(sent) - set(received)), sorted(set(received) - set(sent))
        if missing or unexpected:
            return f"tensor names differ from the model sent (missing {missing[:5]}, unexpected {unexpected[:5]})"
        squared = 0.0
        for name, reference in sent.items():
            array = np.asarray(received[name])
            # 3) shape and dtype, tensor by tensor
            if array.shape != reference.shape:
                return f"tensor {name!r}: shape {array.shape}, expected {reference.shape}"
            if array.dtype != reference.dtype:
                return f"tensor {name!r}: dtype {array.dtype}, expected {reference.dtype}"
            # 4) finite values only (NaN or inf would poison every site's next model)
            if array.dtype.kind == "f":
                if not np.isfinite(array).all():
                    return f"tensor {name!r}: {int(np.size(array) - np.isfinite(array).sum())} non-finite values"
                if self.max_update_norm is not None:
                    squared += float(np.sum((array.astype(np.float64) - reference.astype(np.float64)) ** 2))
        # 5) the size of the step away from the model that was sent
        if self.max_update_norm is not None and squared**0.5 > self.max_update_norm:
            return f"update norm {squared**0.5:.4g} exceeds the bound {self.max_update_norm:g}"
        return None

