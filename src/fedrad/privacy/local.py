"""Local differential privacy: DP-SGD at each site with Opacus, calibrated to the planned job, its budget enforced.

With `privacy: {mode: local, ...}` every site trains with DP-SGD (Abadi et al. 2016) through Opacus:
per-sample gradients clipped to `max_grad_norm`, Gaussian noise of `noise_multiplier *
max_grad_norm` on their sum, and Poisson sampling (each example joins each step's batch with
probability q), which is what the accountant assumes. The rules:

1) The model: BatchNorm mixes the examples of a batch, so it has no per-sample gradient. When local
   DP is on, the task's `build_model` passes the model through `LocalPrivacy.convert` (Opacus'
   `ModuleValidator.fix`: BatchNorm becomes GroupNorm), at the server and at every site alike.
2) The sample rate is Opacus' own: q = 1 / ceil(N / batch_size) for a site with N training
   examples (batch_size / N, rounded so that an epoch is a whole number of expected batches), and
   an epoch is ceil(N / batch_size) steps.
3) Calibration: with `epsilon`, each site solves for the noise that makes the whole planned job
   fit its budget (`opacus.accountants.utils.get_noise_multiplier`): `train.rounds` fits of
   `train.local_epochs` epochs at its own q. A site asked less often (FedAvg's fraction < 1)
   spends less. With `noise_multiplier` the noise is fixed and the epsilon spent is reported;
   with both, the noise is fixed and the site stops at `epsilon`.
4) Accounting: the accountant's history, a list of (noise, q, steps), is part of the site's state
   (`fedrad.site.state`), per fit: a repeated round starts from the history its first try started
   from, so it never spends twice, and a restarted client continues from what it has spent.
5) The budget: before a fit, the site composes its history with the fit it is asked for; if the
   epsilon would exceed the budget it declines with `BudgetExceeded` (FailureKind.BUDGET) and the
   federation goes on without it.
6) Strategies: the server's part (FedAvg, FedAvgM, FedAdam) only post-processes the private
   updates. FedProx's proximal term and SCAFFOLD's correction c - c_i depend on no example of
   this site's data beyond what its earlier private updates released, so they are added to the
   private gradient after the noise. `REFUSED` lists those that cannot work, refused at validation.
7) Determinism: the batches and the noise come from generators seeded by the instruction's seed,
   so one instruction gives one reply, bit for bit (secure_mode, which forbids seeds, is off).
8) Frozen parameters (`task.freeze`, e.g. a feature extractor pretrained on public data and named
   by `task.init`): they are built with `requires_grad=False` and are not given to the optimizer, so
   Opacus computes per-sample gradients of, clips and noises the trainable ones only (the clipping
   norm is over those). Their values are public (the job's init), so freezing them costs no privacy;
   the budget, the calibration and the accountant are unchanged, and the same noise is spread over
   far fewer coordinates. The init file must be of the converted model (GroupNorm), or of a
   `task.norm: group` model, which is the same with and without local DP.

The training loop itself is `fedrad.site.training.private_epochs`, beside the non-private one.

    privacy = LocalPrivacy(epsilon=8.0, rounds=12, epochs=2, batch_size=32)
    noise = privacy.noise_for(num_train=400)  # the site's calibrated noise multiplier
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from fedrad.privacy.summary import EPSILON_ROUND, EPSILON_SPENT, NOISE_MULTIPLIER
from fedrad.site.training import SiteError
from fedrad.types import FailureKind, FitConfig

History = tuple[tuple[float, float, int], ...]
"""An Opacus accountant's history: (noise_multiplier, sample_rate, steps) per stretch of training."""

# Strategies local DP cannot run, and why (one line each; refused when the job is validated).
REFUSED: dict[str, str] = {
    "fedbn": "FedBN keeps BatchNorm at each site, and local DP replaces BatchNorm by GroupNorm",
    "ensemble": "ensemble inference sends a site's test images to the others, which DP-SGD does not protect",
    "swt": "sequential training (swt, cwt) gives each visit its own epochs and early stopping, "
           "outside the budget that local DP plans per round",
    "swt-reversed": "sequential training (swt, cwt) gives each visit its own epochs and early stopping, "
                    "outside the budget that local DP plans per round",
    "cwt": "sequential training (swt, cwt) gives each visit its own epochs and early stopping, "
           "outside the budget that local DP plans per round",
}


def strategy_refusal(name: str) -> str | None:
    """Why local DP cannot run strategy `name` (one line), or None."""
    return REFUSED.get(name)


class BudgetExceeded(SiteError):
    """A fit this site declines: it would take its epsilon past the job's budget (FailureKind.BUDGET)."""

    def __init__(self, message: str):
        super().__init__(message, FailureKind.BUDGET)


def sample_rate(num_train: int, batch_size: int) -> float:
    """Opacus' Poisson sample rate for a site: 1 / (its expected batches per epoch)."""
    return 1.0 / steps_per_epoch(num_train, batch_size)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return max(1, math.ceil(num_train / batch_size))


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """The epsilon at `delta` of an accountant's history (0 for none), by Opacus' accountant.

    RDP: what `RDPAccountant.get_epsilon` computes, from Opacus' own `compute_rdp` and
    `get_privacy_spent`, with each (noise, rate)'s one-step RDP cached: RDP is linear in the steps
    (`compute_rdp` returns one step's times `steps`), so the result is the accountant's bit for bit,
    without recomputing every earlier round at every round. PRV: a fresh PRVAccountant.
    """
    if not history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a large epsilon, still correct
        if accountant == "rdp":
            from opacus.accountants import RDPAccountant
            from opacus.accountants.analysis.rdp import get_privacy_spent

            rdp = sum(_one_step_rdp(float(s), float(q)) * int(n) for s, q, n in history)
            return float(get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])
        from opacus.accountants import create_accountant

        acc = create_accountant(mechanism=accountant)
        acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=256)
def _one_step_rdp(noise: float, rate: float):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)  # shared by every caller
    return rdp


def compose(history: History, entry: tuple[float, float, int]) -> History:
    """The history after `entry`, merged into the last stretch when noise and sample rate agree (as Opacus does)."""
    if history and history[-1][:2] == entry[:2]:
        return (*history[:-1], (entry[0], entry[1], history[-1][2] + entry[2]))
    return (*history, entry)


@functools.lru_cache(maxsize=64)
def _calibrated(epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" while it searches
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=rate,
                                          steps=steps, accountant=accountant))  # fmt: skip


def replaced_layers(model: nn.Module) -> dict:
    """What `convert` replaces in `model`: `{"BatchNorm2d": "GroupNorm", "replaced": 3}`, or {} for nothing."""
    from opacus.validators import ModuleValidator

    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not batchnorms and ModuleValidator.is_valid(model):
        return {}
    names = sorted({type(m).__name__ for m in batchnorms})
    return {name: "GroupNorm" for name in names} | {"replaced": len(batchnorms)}


@dataclass(frozen=True)
class LocalPrivacy:
    """The job's local DP, as every site applies it: the budget, the clipping, and the job it plans for."""

    epsilon: float | None = None  # each site's budget for the whole job; None: none enforced (fixed noise)
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None  # fixed noise; None: calibrated to epsilon
    accountant: str = "rdp"  # Opacus' "rdp" or "prv"
    rounds: int = 1  # the fits planned per site (train.rounds)
    epochs: int = 1  # local epochs per fit (train.local_epochs)
    batch_size: int = 32

    @classmethod
    def from_config(cls, config) -> LocalPrivacy | None:
        """The job's local DP (`config`: a JobConfig), or None when `privacy.mode` is not local."""
        p, train = config.privacy, config.train
        if p.mode != "local":
            return None
        return cls(p.epsilon, p.delta, p.max_grad_norm, p.noise_multiplier, p.accountant,
                   train.rounds, train.local_epochs, train.batch_size)  # fmt: skip

    def convert(self, model: nn.Module) -> nn.Module:
        """The model made trainable with per-sample gradients: Opacus' ModuleValidator.fix (BatchNorm
        to GroupNorm), and no in-place activation (Opacus' backward hooks cannot see through one)."""
        from opacus.validators import ModuleValidator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fix() warns about each replacement it makes
            model = ModuleValidator.fix(model)
        for module in model.modules():
            if hasattr(module, "inplace") and isinstance(module, nn.Module):
                module.inplace = False
        return model

    def noise_for(self, num_train: int) -> float:
        """The noise multiplier of a site with `num_train` examples: fixed, or calibrated to the planned job."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        rate = sample_rate(num_train, self.batch_size)
        steps = self.rounds * self.epochs * steps_per_epoch(num_train, self.batch_size)
        return _calibrated(self.epsilon, self.delta, rate, steps, self.accountant)

    def planned_fit(self, site_id: str, num_train: int, fit: FitConfig) -> tuple[float, float, int]:
        """(noise, sample rate, steps) of one fit as instructed (the instruction's epochs and batch size)."""
        try:
            noise = self.noise_for(num_train)
        except ValueError as exc:  # get_noise_multiplier: "The privacy budget is too low."
            raise BudgetExceeded(f"site {site_id}: no noise meets epsilon {self.epsilon} at delta {self.delta} "
                                 f"over the planned job ({exc})") from None  # fmt: skip
        return noise, sample_rate(num_train, fit.batch_size), fit.epochs * steps_per_epoch(num_train, fit.batch_size)

    def check(self, site_id: str, round: int, history: History, entry: tuple[float, float, int]) -> float:
        """The epsilon after a fit of `entry` on top of `history`; BudgetExceeded if that passes the budget."""
        after = epsilon_of(compose(history, entry), self.delta, self.accountant)
        if self.epsilon is not None and after > self.epsilon * (1 + 1e-9):
            spent = epsilon_of(history, self.delta, self.accountant)
            raise BudgetExceeded(f"site {site_id}: round {round} declined: it would take epsilon from {spent:.4g} "
                                 f"to {after:.4g}, past the budget {self.epsilon:g} (delta {self.delta:g})")
        return after

    def metrics(self, before: History, after: History, noise: float) -> dict[str, float]:
        """What a fit reply reports: the epsilon spent so far, this round's share, the noise."""
        spent_before = epsilon_of(before, self.delta, self.accountant)
        spent = epsilon_of(after, self.delta, self.accountant)
        return {EPSILON_SPENT: spent, EPSILON_ROUND: spent - spent_before, NOISE_MULTIPLIER: float(noise)}
