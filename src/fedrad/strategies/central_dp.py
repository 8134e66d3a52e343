"""Central (user-level) differential privacy: DP-FedAvg (McMahan et al. 2018) around an averaging strategy.

The protected unit is a whole site (a hospital), not a patient. Each round:

1) each site's update, its float entries minus the global model sent, is clipped to L2 norm S
   (`privacy.max_grad_norm`), over every float entry it sends, BatchNorm running statistics
   included (they are computed from the site's images, so they must be covered);
2) the clipped updates are summed with weight 1 each and divided by n, the number of sites the
   round *asked*, not the number that replied nor their example counts: the fixed-denominator
   estimator, so one site changes the mean by at most S / n whatever the others do;
3) Gaussian noise N(0, (z S / n)^2) is added to every coordinate of the mean update, even in a
   round where no site replied (a site that fails is indistinguishable from a site that is absent);
4) the global model plus the noisy mean update goes to the inner strategy as its only "reply", so
   FedAvg takes it as the new model and FedAvgM / FedAdam step along it. Integer entries
   (num_batches_tracked) are the global model's, never a site's: they count batches, so would
   give away the site's size, and fedrad's BatchNorm (momentum 0.1) never reads them. A running
   variance the noise made negative is set to 0 (post-processing costs no privacy).

Accounting: the neighbouring relation is one site's contribution present or zeroed (a hospital in
or out of the federation, the roster of named hospitals being public). The sensitivity of the
mean is S / n and its noise z S / n, so every round a site is asked is one Gaussian mechanism with
noise multiplier z, composed by dp-accounting's RDP accountant (`accountant: rdp`) or its PLD
accountant (`accountant: prv`). No amplification by subsampling is claimed: fedrad samples a fixed
number of sites from the job seed that every site approves, and tells each site it was asked, so
who took part is public, not secret as amplification requires. Instead each site is charged for
the rounds it is actually asked (the plan is a pure function of the seed and the round), and the
federation's epsilon is the largest site's. With `epsilon`, z is calibrated by
`dp_accounting.calibrate_dp_mechanism` so that the planned rounds fit it at `delta`; with
`noise_multiplier`, z is given and the epsilon is reported. A round past the plan is refused.

Noise seed: the noise of round r, entry NAME is drawn from SeedSequence([seed, r, TAG, crc32(NAME)]),
so a resumed server re-running a round adds the same noise, bit for bit. Whoever knows that seed
can subtract the noise: a deployment must pass a server secret (`server_noise_seed`), never the
job seed the sites see; the simulator uses the job seed, for reproducible experiments.

Example:
    >>> strategy = wrap(FedAvg(), PrivacyConfig(mode="central", epsilon=8), ["a", "b"], rounds=10, seed=0)
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from fedrad.strategies.base import (
    AVERAGING,
    GLOBAL,
    FitResult,
    FitTask,
    ServerState,
    Strategy,
    StrategyWrapper,
    from_one_reply,
    planned_sites,
)
from fedrad.types import Weights

TAG = 0x44505F4E  # "DP_N": keeps the noise stream apart from FedAvg's site sampling, default_rng([seed, round])
REFUSED = {
    "cds": "pools every hospital's raw data in one place; there is no per-site update to clip",
    "local": "trains each site alone; the server aggregates nothing to add noise to (use privacy.mode local)",
    "ensemble": "releases each site's own model unaveraged; noise on a mean cannot cover it",
    "swt": "hands one model from site to site; there is no aggregate, each hop would need its own noise",
    "swt-reversed": "hands one model from site to site; there is no aggregate, each hop would need its own noise",
    "cwt": "hands one model from site to site; there is no aggregate, each hop would need its own noise",
    "scaffold": "also sends each site's control variate, which would need its own clipping and noise",
}


def refusal(name: str) -> str | None:
    """Why central DP cannot wrap the strategy `name` (one line), or None: only averaging strategies."""
    if name in AVERAGING:
        return None
    why = REFUSED.get(name, "is not an averaging strategy central DP knows how to wrap")
    return f"privacy.mode central cannot wrap strategy {name!r}: it {why}"


def make_accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    """dp-accounting's RDP accountant ("rdp") or its PLD accountant ("prv": the tight numerical one)."""
    if kind not in ("rdp", "prv"):
        raise ValueError(f"privacy.accountant must be 'rdp' or 'prv', got {kind!r}")
    return rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()


def site_event(noise_multiplier: float, rounds_asked: int) -> dp_accounting.DpEvent:
    """What one site has been through: `rounds_asked` Gaussian mechanisms of noise multiplier z."""
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds_asked)


@lru_cache(maxsize=256)
def epsilon_of(noise_multiplier: float, rounds_asked: int, delta: float, accountant: str = "rdp") -> float:
    """The epsilon at `delta` of a site asked `rounds_asked` times (0 for a site never asked)."""
    if rounds_asked == 0:
        return 0.0
    ledger = make_accountant(accountant)
    ledger.compose(site_event(noise_multiplier, rounds_asked))
    return float(ledger.get_epsilon(delta))


def calibrate(epsilon: float, delta: float, rounds_asked: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier z whose `rounds_asked` rounds fit `epsilon` at `delta` (dp-accounting)."""
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(accountant), lambda z: site_event(z, rounds_asked), epsilon, delta
    ))


def server_noise_seed(directory: Path) -> int:
    """The deployed server's secret noise seed, kept in `directory`/dp_noise_seed (created once, mode 600):
    a resumed server reads the same one, the sites never see it."""
    path = Path(directory) / "dp_noise_seed"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"{secrets.randbits(63)}\n")
    return int(path.read_text())


class CentralDP(StrategyWrapper):
    """DP-FedAvg (McMahan et al. 2018): clip each site's update to S, average over the asked sites, add
    N(0, (z S / n)^2); the inner strategy turns the noisy mean into its next state.

    `plan[r]` is the sites round r asks (the inner strategy's seeded sampling), fixed when wrapped.
    """

    def __init__(
        self, inner: Strategy, plan: Sequence[Sequence[str]], clip_norm: float, noise_multiplier: float,
        delta: float, seed: int, accountant: str = "rdp", target_epsilon: float | None = None,
    ):
        super().__init__(inner)
        if not clip_norm > 0:
            raise ValueError(f"privacy.max_grad_norm must be positive, got {clip_norm}")
        if not noise_multiplier > 0:
            raise ValueError(f"privacy.noise_multiplier must be positive, got {noise_multiplier}")
        self.plan = [list(sites) for sites in plan]
        self.clip_norm, self.noise_multiplier, self.delta = clip_norm, noise_multiplier, delta
        self.seed, self.accountant, self.target_epsilon = seed, accountant, target_epsilon

    def configure(self, round: int, state: ServerState, sites: Sequence[str]) -> list[FitTask]:
        if round >= len(self.plan):
            raise ValueError(f"privacy: round {round} is past the {len(self.plan)} rounds the budget was planned for")
        tasks = self.inner.configure(round, state, sites)
        if [t.site_id for t in tasks] != self.plan[round]:
            raise ValueError(f"privacy: round {round} asks other sites than planned ({self.plan[round]})")
        return tasks

    def begin(self, round: int, state: ServerState) -> ClippedNoisyMean:
        return ClippedNoisyMean(self, round, state)

    def noise(self, round: int, name: str, shape: tuple[int, ...], std: float) -> np.ndarray:
        """Round `round`'s noise for entry `name`: seeded by (seed, round, name), independent of the order."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, round, TAG, zlib.crc32(name.encode())]))
        return rng.standard_normal(shape) * std

    def rounds_asked(self, site: str, rounds: int) -> int:
        """How many of the first `rounds` rounds ask `site`."""
        return sum(site in asked for asked in self.plan[:rounds])

    def site_epsilons(self, rounds: int) -> dict[str, float]:
        """Each site's epsilon at `delta` after the first `rounds` rounds."""
        sites = sorted({s for asked in self.plan for s in asked})
        counts = {s: self.rounds_asked(s, rounds) for s in sites}
        cache = {k: epsilon_of(self.noise_multiplier, k, self.delta, self.accountant) for k in set(counts.values())}
        return {s: cache[k] for s, k in counts.items()}

    def epsilon_spent(self, rounds: int) -> float:
        """The federation's epsilon after the first `rounds` rounds: the most-asked site's."""
        return max(self.site_epsilons(rounds).values(), default=0.0)


class ClippedNoisyMean:
    """The round's fold: sums clipped updates one at a time (float64, one model-sized buffer), then noise."""

    def __init__(self, dp: CentralDP, round: int, state: ServerState):
        self.dp, self.round, self.state = dp, round, state
        self.start = state.models[GLOBAL]
        local = dp.inner.local_names(self.start)  # FedBN's BatchNorm: never sent, never averaged
        self.names = [n for n in self.start if n not in local]
        self.sum = {n: np.zeros(self.start[n].shape) for n in self.names if self.start[n].dtype.kind == "f"}
        self.clip_factors: list[float] = []  # min(1, S / ||update||) of each folded site, for tests and logs

    def add(self, result: FitResult, owned: bool = False) -> None:
        if set(result.weights) != set(self.names):
            differ = sorted(set(result.weights) ^ set(self.names))[:5]
            raise ValueError(f"site {result.site_id}: update names differ from the model sent: {differ}")
        update = {n: result.weights[n].astype(np.float64) - self.start[n] for n in self.sum}
        norm = float(np.sqrt(sum(np.sum(u * u) for u in update.values())))
        factor = min(1.0, self.dp.clip_norm / norm) if norm > 0 else 1.0
        for name, u in update.items():
            self.sum[name] += u * factor
        self.clip_factors.append(factor)

    def finish(self) -> ServerState:
        asked = len(self.dp.plan[self.round])
        std = self.dp.noise_multiplier * self.dp.clip_norm / asked
        model: Weights = {}
        for name in self.names:
            start = self.start[name]
            if name not in self.sum:  # integer counters: the global model's
                model[name] = start.copy()
                continue
            mean = self.sum[name] / asked + self.dp.noise(self.round, name, start.shape, std)
            value = start + mean
            if name.endswith("running_var"):
                value = np.maximum(value, 0.0)
            model[name] = value.astype(start.dtype)
        return from_one_reply(self.dp.inner, self.round, self.state, FitResult("central-dp", model, 1))


def wrap(strategy: Strategy, privacy: Any, sites: Sequence[str], rounds: int, seed: int) -> CentralDP:
    """`strategy` under the job's `privacy` (mode central) for `rounds` orchestrator rounds on `sites`.

    `seed` seeds the noise: the job seed in simulation, `server_noise_seed(...)` in a deployment.
    """
    why = refusal(strategy.name)
    if why:
        raise ValueError(why)
    if rounds < 1:
        raise ValueError(f"privacy: central DP needs at least one planned round, got {rounds}")
    plan = planned_sites(strategy, sites, rounds)
    most = max(sum(s in asked for asked in plan) for s in sites)
    z = privacy.noise_multiplier or calibrate(privacy.epsilon, privacy.delta, most, privacy.accountant)
    return CentralDP(strategy, plan, privacy.max_grad_norm, z, privacy.delta, seed, privacy.accountant, privacy.epsilon)


def central_privacy_summary(strategy: CentralDP, rounds_done: int) -> dict[str, Any]:
    """summary.json's `privacy` for central mode after `rounds_done` completed rounds."""
    per_round = [strategy.epsilon_spent(r + 1) for r in range(rounds_done)]
    return {
        "mode": "central",
        "unit": "site",
        "epsilon": strategy.target_epsilon,  # the job's budget, as in local mode (None: noise_multiplier given)
        "epsilon_final": per_round[-1] if per_round else 0.0,  # spent by the completed rounds
        "delta": strategy.delta,
        "noise_multiplier": strategy.noise_multiplier,
        "clip_norm": strategy.clip_norm,
        "accountant": strategy.accountant,
        "epsilon_spent": per_round,  # the federation's, after each round
        "sites": {site: {"epsilon_spent": e} for site, e in strategy.site_epsilons(rounds_done).items()},
    }


def noise_std(strategy: CentralDP, round: int) -> float:
    """The per-coordinate noise standard deviation on round `round`'s mean update: z S / n."""
    return strategy.noise_multiplier * strategy.clip_norm / len(strategy.plan[round])

