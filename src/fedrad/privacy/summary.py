"""The privacy a run spent, for `summary.json`: the job's budget and each site's epsilon, from the round records.

Each site reports in its fit reply's metrics the epsilon it has spent so far (`epsilon_spent`,
cumulative, from its accountant) and this round's increment (`epsilon_round`); a site that declined
a round because it would exceed its budget is a failure of kind `budget`. `privacy_summary` reads
both back from the server's RoundRecords, so the simulator and the deployed server report alike:

    privacy: {mode: local, epsilon: 8.0, delta: 1e-05, accountant: rdp, ...,
              model: {"BatchNorm2d": "GroupNorm", replaced: 3},
              sites: {hospital-a: {epsilon_spent: 7.98, stopped: false}, ...}}

This module imports no torch: the ledger and the summary read its metric names.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedrad.types import FailureKind

EPSILON_SPENT = "epsilon_spent"  # a site's cumulative epsilon after this fit (at the job's delta)
EPSILON_ROUND = "epsilon_round"  # what this fit added to it (the ledger's privacy column)
NOISE_MULTIPLIER = "noise_multiplier"  # the noise this site trained with (calibrated to its own data size)


def privacy_summary(config, records: Sequence) -> dict:
    """`summary.json`'s `privacy` block of a job (`config`: a JobConfig) from its RoundRecords."""
    p = config.privacy
    out: dict = {"mode": p.mode}
    if p.mode == "none":
        return out
    out |= {"epsilon": p.epsilon, "delta": p.delta, "max_grad_norm": p.max_grad_norm,
            "noise_multiplier": p.noise_multiplier}
    if p.mode != "local":
        return out
    out |= {"accountant": p.accountant, "model": model_conversion(config), "sites": site_spend(records)}
    return out


def site_spend(records: Sequence) -> dict[str, dict]:
    """Per site: the epsilon it last reported spent, whether (and from which round) it declined for its budget."""
    sites: dict[str, dict] = {}
    for record in records:
        for site_id in record.asked:
            sites.setdefault(site_id, {EPSILON_SPENT: 0.0, "stopped": False})
        for site_id, metrics in record.train_metrics.items():
            if EPSILON_SPENT in metrics:
                entry = sites.setdefault(site_id, {EPSILON_SPENT: 0.0, "stopped": False})
                entry[EPSILON_SPENT] = float(metrics[EPSILON_SPENT])
        for failure in record.failures:
            if failure.kind == FailureKind.BUDGET and failure.phase == "train":
                entry = sites.setdefault(failure.site_id, {EPSILON_SPENT: 0.0, "stopped": False})
                if not entry["stopped"]:
                    entry |= {"stopped": True, "stopped_round": int(record.round)}
    return dict(sorted(sites.items()))


def model_conversion(config) -> dict | None:
    """The layers local DP replaced in the job's model (Opacus' ModuleValidator.fix), e.g.
    `{"BatchNorm2d": "GroupNorm", "replaced": 3}`; `{}` when none needed replacing; None when the
    model cannot be built without the sites' data (a job reading site YAMLs without declared sizes)."""
    import dataclasses

    from fedrad.privacy.local import replaced_layers
    from fedrad.run.federation import FederationError, build_task_for

    try:
        task = build_task_for(config)
    except FederationError:
        return None
    return replaced_layers(dataclasses.replace(task, privacy=None).build_model())
