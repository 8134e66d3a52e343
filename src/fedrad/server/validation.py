"""Update validation: every incoming update is checked before it touches the global model.

A reply's weights must carry exactly the names of the model the site was sent, with the same
shapes and dtypes, finite values, an example count no larger than the site declared, and an
update (received - sent) whose L2 norm is not far above what honest sites send. A failing update
is rejected with a reason that names the site and the tensor; the orchestrator records it as that
site's failure and the round goes on with the others. The check is the same for every transport.

The norm bound is relative (`norm_multiplier`, on by default): an update whose norm exceeds
`norm_multiplier` x a reference is rejected. The reference is the median norm of the updates
accepted in the latest earlier training round of the run (the orchestrator keeps that history;
its median needs most sites honest, one site cannot move it). The current round's median is not
known when an update must be judged: a fold-based strategy adds each update to the running sum
before the next reply is read. In the first round, with no history, the reference is the norm of
the model sent (an honest step is a fraction of it); a model sent with norm 0 gives no reference,
and only the absolute `max_update_norm` (off by default) bounds that round.

The norm is accumulated in float64 with scaling (LAPACK's dnrm2), so values near the float32
maximum give a finite norm, and one that is still too large is infinity, never NaN: it is compared,
not silently passed. A site that declared nothing (`declared` None) is held to `max_num_examples`
only; a site that lies about its count from its first contact on is not caught here (robust
aggregation is the defence against a site that is consistently hostile).

Example:
    >>> verdict = UpdateValidator().judge("hosp-a", received, sent, 120, NormReference(0.84, "..."), declared=120)
    >>> verdict.reason, verdict.norm
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from fedrad.types import Weights

UPDATE_NORM = "update_norm"  # the server-computed key in a site's train metrics (metrics.jsonl)


@dataclass(frozen=True)
class NormReference:
    """What the relative bound is measured against: a norm and how to say where it came from."""

    norm: float
    what: str  # "the median update norm 0.84 of round 2", "the norm 5.3 of the model sent"


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # None: the update may be aggregated
    norm: float  # L2 norm of (received - sent) over the float entries; NaN if the checks stopped before it


@dataclass(frozen=True)
class UpdateValidator:
    max_update_norm: float | None = None  # absolute bound on the update's L2 norm; None: none
    max_num_examples: int = 10_000_000  # a site claiming more would outweigh everyone in the average
    # Relative bound: update norm <= norm_multiplier x the reference; None: off. 10 is about twice
    # the largest honest ratio measured over every strategy on the phantom jobs (docs/deploy.md).
    norm_multiplier: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be positive, got {self.max_update_norm}")
        if self.max_num_examples < 1:
            raise ValueError(f"max_num_examples must be at least 1, got {self.max_num_examples}")
        if self.norm_multiplier is not None and not self.norm_multiplier > 0:
            raise ValueError(f"norm_multiplier must be positive, got {self.norm_multiplier}")

    def check(
        self, site_id: str, received: Weights, sent: Weights, num_examples: int,
        reference: NormReference | None = None, declared: int | None = None,
    ) -> str | None:
        """None if the update may be aggregated, else why not (one line naming the site)."""
        return self.judge(site_id, received, sent, num_examples, reference, declared).reason

    def judge(
        self, site_id: str, received: Weights, sent: Weights, num_examples: int,
        reference: NormReference | None = None, declared: int | None = None,
    ) -> Verdict:
        """The reason (as `check`) and the update's norm, computed once for the bound and the record."""
        norm = math.nan
        reason = self._problem(received, sent, num_examples, declared)
        if reason is None:
            norm = update_norm(received, sent)
            reason = self._too_large(norm, reference)
        return Verdict(None if reason is None else f"site {site_id}: update rejected: {reason}", norm)

    def _problem(self, received: Weights, sent: Weights, num_examples: int, declared: int | None) -> str | None:
        # 1) the example count weights the average: it must be sane, and no more than the site declared
        if not 0 < num_examples <= self.max_num_examples:
            return f"num_examples {num_examples} outside [1, {self.max_num_examples}]"
        if declared is not None and num_examples > declared:
            return f"num_examples {num_examples} exceeds the {declared} training examples its data card declares"
        # 2) the same tensor names as the model that was sent
        missing, unexpected = sorted(set(sent) - set(received)), sorted(set(received) - set(sent))
        if missing or unexpected:
            return f"tensor names differ from the model sent (missing {missing[:5]}, unexpected {unexpected[:5]})"
        for name, reference in sent.items():
            array = np.asarray(received[name])
            # 3) shape and dtype, tensor by tensor
            if array.shape != reference.shape:
                return f"tensor {name!r}: shape {array.shape}, expected {reference.shape}"
            if array.dtype != reference.dtype:
                return f"tensor {name!r}: dtype {array.dtype}, expected {reference.dtype}"
            # 4) finite values only (NaN or inf would poison every site's next model)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                return f"tensor {name!r}: {int(np.size(array) - np.isfinite(array).sum())} non-finite values"
        return None

    def _too_large(self, norm: float, reference: NormReference | None) -> str | None:
        # 5) the size of the step away from the model that was sent: absolute, then relative
        if self.max_update_norm is not None and not norm <= self.max_update_norm:
            return f"update norm {norm:.4g} exceeds the bound {self.max_update_norm:g}"
        if self.norm_multiplier is None or reference is None or not reference.norm > 0:
            return None
        if not norm <= self.norm_multiplier * reference.norm:
            return f"update norm {norm:.3g} is above {self.norm_multiplier:g} x {reference.what}"
        return None


def masked_problem(
    site_id: str, received: Weights, control: Weights | None, masked, num_examples: int, declared: int | None,
    validator: UpdateValidator | None,
) -> str | None:
    """Why a masked upload (secure aggregation, `strategies.base.MaskedFit`) must not be summed, or None.

    Its values are uniform words mod 2^32 whatever the update: finiteness and norms cannot be judged
    (the site clips before masking; docs/secure_aggregation.md). What can: the names and shapes the
    layout gives, dtype uint32, no control variates, and the example count, which must equal the
    weight the site advertised and fit its data card.
    """
    cap = validator.max_num_examples if validator is not None else UpdateValidator.max_num_examples

    def rejected(why: str) -> str:
        return f"site {site_id}: masked update rejected: {why}"

    if control is not None:
        return rejected("the reply carries control variates it was not sent")
    if num_examples != masked.num_examples:
        return rejected(f"num_examples {num_examples}, it advertised {masked.num_examples}")
    if not 0 < num_examples <= cap or (declared is not None and num_examples > declared):
        return rejected(f"num_examples {num_examples} outside [1, {cap if declared is None else min(cap, declared)}]")
    missing, unexpected = sorted(set(masked.shapes) - set(received)), sorted(set(received) - set(masked.shapes))
    if missing or unexpected:
        return rejected(f"tensor names differ from the masked layout (missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]})")
    for name, shape in masked.shapes.items():
        array = np.asarray(received[name])
        if array.shape != tuple(shape) or array.dtype != np.uint32:
            return rejected(f"tensor {name!r}: {array.dtype} {array.shape}, expected uint32 {tuple(shape)}")
    return None


PIECE = 1 << 20  # elements per piece: the norms' float64 temporaries stay 8 MB whatever a tensor's size


def _pieces(array: np.ndarray) -> Iterator[np.ndarray]:
    """The array's elements in pieces of at most PIECE, as float64 (a view of each piece, then its copy)."""
    flat = np.asarray(array).reshape(-1)
    for start in range(0, flat.size, PIECE):
        yield flat[start : start + PIECE].astype(np.float64)


def update_norm(received: Weights, sent: Weights) -> float:
    """L2 norm of (received - sent) over the float entries of `sent`, in float64, overflow-safe (`scaled_norm`),
    piece by piece: the server holds an update and the model, not float64 copies of them."""
    return scaled_norm(
        new - old
        for name, reference in sent.items() if reference.dtype.kind == "f"
        for new, old in zip(_pieces(received[name]), _pieces(reference), strict=True)
    )


def model_norm(weights: Weights) -> float:
    """L2 norm of the float entries of `weights` (the first round's reference), piece by piece."""
    return scaled_norm(piece for a in weights.values() if a.dtype.kind == "f" for piece in _pieces(a))


def scaled_norm(arrays: Iterable[np.ndarray]) -> float:
    """The L2 norm of all `arrays` together, scaled as LAPACK's dnrm2.

    Each array is divided by its largest magnitude before squaring, so 1e30 everywhere gives
    1e30 x sqrt(n), not infinity; only a norm above the float64 maximum is infinite (and then
    always rejected by a bound, never NaN).
    """
    scale, scaled_squares = 0.0, 0.0  # norm = scale * sqrt(scaled_squares)
    for array in arrays:
        largest = float(np.max(np.abs(array))) if array.size else 0.0
        if largest == 0.0:
            continue
        if not math.isfinite(largest):
            return math.inf
        squares = float(np.sum(np.square(array / largest)))  # each term at most 1
        if largest > scale:
            scaled_squares, scale = scaled_squares * (scale / largest) ** 2 + squares, largest
        else:
            scaled_squares += squares * (largest / scale) ** 2
    return scale * math.sqrt(scaled_squares) if scale else 0.0
