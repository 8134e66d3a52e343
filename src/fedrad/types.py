"""The typed messages that cross the site boundary, and the records a round produces.

Instructions go from the server to a site, Replies come back. Both are frozen dataclasses whose
tensors are safetensors bytes (never pickle), so the same objects can be written to protobuf for
the network transport or handed over directly in-process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

Weights = dict[str, np.ndarray]
"""A model's state as named numpy arrays (what strategies see; they never import torch)."""


class DataKind(StrEnum):
    """What kind of bytes crosses a boundary (the review's "transferred data" column)."""

    WEIGHTS = "weights"
    OUTPUTS = "outputs"
    ACTIVATIONS = "activations"
    RAW_DATA = "raw_data"
    METRICS = "metrics"  # aggregate evaluation statistics (confusion counts, score histograms)
    CONTROL = "control_variates"  # SCAFFOLD's control variates (server c to a site, a site's delta c_i back)
    SECAGG = "secagg"  # secure aggregation's keys, sealed shares and rosters (fedrad.secagg, protobuf)


class FailureKind(StrEnum):
    """Why a site did not deliver: typed, so that summaries, status and exit codes never parse messages."""

    TIMEOUT = "timeout"  # no reply by the deadline (the site is connected, or was)
    DROPPED = "dropped"  # the site is not connected, or hung up mid-task
    REJECTED = "rejected"  # a reply arrived but failed validation (unreadable, wrong shape, non-finite, too large)
    REFUSED = "refused"  # the site refused the instruction (another job hash, weights it cannot use)
    ERROR = "error"  # the site raised while training or evaluating
    BUDGET = "budget"  # the site declined: its next round would exceed its privacy budget


class FailureError(Exception):
    """An exception that knows its FailureKind: a transport turns it into a failed Reply of that kind.

    Any other exception a site raises is an ERROR. Subclasses (fedrad.site.training.SiteError, a
    privacy-budget refusal) set `kind`, so no layer above ever reads the message to classify it.
    """

    kind: FailureKind = FailureKind.ERROR


def failure_kind(exc: BaseException) -> FailureKind:
    """The kind of failure an exception raised by a site stands for (ERROR unless it says otherwise)."""
    return exc.kind if isinstance(exc, FailureError) else FailureKind.ERROR


class InstructionKind(StrEnum):
    FIT = "fit"
    EVALUATE = "evaluate"
    PREDICT = "predict"  # ensemble inference: raw query images in, output probabilities back
    SECAGG = "secagg"  # a secure-aggregation phase (advertise, share, unmask): DataKind.SECAGG both ways


class RoundAborted(Exception):
    """A round that cannot go on (secure aggregation below its threshold): one line; the round keeps the
    previous model, the run goes on (the orchestrator records the line in the round's notes)."""


@dataclass(frozen=True)
class FitConfig:
    """Local-training hyperparameters a site receives with a fit instruction."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    prox_mu: float = 0.0  # FedProx proximal term; 0 means plain local SGD
    lr_decay: float = 1.0  # the site trains round r with lr * lr_decay**r (1.0 = constant)
    # Early stopping on the site's validation split (Chang et al. 2018): stop when the validation
    # loss has not improved for `patience` epochs and keep the best epoch's weights; None = run all
    # `epochs` (then `epochs` is the maximum).
    patience: int | None = None

    def lr_at(self, round: int) -> float:
        return self.lr * self.lr_decay**round


@dataclass(frozen=True)
class Instruction:
    """What the server asks of one site in one round."""

    round: int
    site_id: str
    kind: InstructionKind
    payload: Mapping[DataKind, bytes | bytearray]  # safetensors bytes per kind
    fit: FitConfig = field(default_factory=FitConfig)
    job_hash: str = ""
    seed: int = 0  # seeds the site's shuffling, so a round is reproducible
    # Entries the site keeps for itself (FedBN's BatchNorm, an ensemble member): a site with state
    # of its own uses its values and does not send them back; one without starts from the sent ones.
    keep_local: frozenset[str] = frozenset()

    def nbytes(self) -> dict[DataKind, int]:
        return {kind: len(blob) for kind, blob in self.payload.items()}


@dataclass(frozen=True)
class Reply:
    """What one site returns: new weights or evaluation statistics, or the reason it failed."""

    round: int
    site_id: str
    kind: InstructionKind
    payload: Mapping[DataKind, bytes | bytearray] = field(default_factory=dict)
    num_examples: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    error_kind: FailureKind | None = None  # with `error`: why (left unset, ERROR)

    def __post_init__(self) -> None:
        if self.error is not None and self.error_kind is None:
            object.__setattr__(self, "error_kind", FailureKind.ERROR)

    @property
    def ok(self) -> bool:
        return self.error is None

    def nbytes(self) -> dict[DataKind, int]:
        return {kind: len(blob) for kind, blob in self.payload.items()}


@dataclass(frozen=True)
class SiteFailure:
    """A site that did not deliver in a round; data, never an exception that ends the run."""

    site_id: str
    reason: str
    kind: FailureKind = FailureKind.ERROR
    phase: str = "train"  # "train" or "evaluate"
