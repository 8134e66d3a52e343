"""Membership inference against a run's final model: can an attacker tell a training scan from a fresh one?

The phantom generator is the population, so the audit knows the truth for every scan:
- members: each site's training split, regenerated from the job (`build_sites(config)` is
  deterministic, so these are exactly the scans the run trained on);
- non-members: fresh scans from the same hospitals' generators (same scanner profile, same
  prevalence) under another seed, `non_members` per site. Not the sites' test splits: those are
  small (20 scans at the smallest demo hospital), and TPR at 0.1% FPR needs at least 1,000
  non-members to mean more than "no false positive at all".

Two attacks score every scan; a higher score says "member":
1) loss threshold (Yeom et al. 2018): score = -loss of the target model on the scan;
2) reference models, offline LiRA (Carlini et al. 2022, with a global variance, since the audit
   keeps few references): `references` models trained with the job's own strategy and recipe on
   fresh phantom scans of another seed, each hospital with `reference_scale` of its patients;
   score = phi_target(x) - mean_k phi_ref_k(x), phi = the logit-scaled confidence in the true
   label, log p_y - log(1 - p_y). Subtracting what models that never saw x make of it removes the
   scan's own difficulty, which the loss attack mistakes for membership.

Each attack is reported as ROC AUC and TPR at 1% and 0.1% FPR, per site and pooled (every
site's members against every site's non-members, each scored by the model of its own site).

Example:
    >>> roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85]))
    0.75
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from scipy.stats import mannwhitneyu
from torch import nn

from fedrad.config import EvaluationConfig, HospitalConfig, JobConfig, ScannerConfig
from fedrad.data.base import Split, concat_splits
from fedrad.data.phantom import DEFAULT_HOSPITALS
from fedrad.types import Weights

NON_MEMBER_SEED = 104_729  # added to the job's seed: the non-members' phantom draw
REFERENCE_SEED = 7_919  # reference k is trained on the draw of seed + (k + 1) * REFERENCE_SEED
FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_01pct_fpr": 0.001}


class AuditError(ValueError):
    """A run the audit cannot attack (not a phantom job, no model); one line naming the file."""


@dataclass(frozen=True)
class AuditSettings:
    references: int = 4  # reference models for the LiRA-style attack; 0: the loss attack only
    reference_scale: float = 0.5  # each reference trains on this share of each hospital's patients
    non_members: int = 1000  # fresh scans per site: 1% FPR is then 10 false positives, 0.1% is 1

    def __post_init__(self) -> None:
        if self.references < 0 or self.non_members < 100 or not 0 < self.reference_scale <= 1:
            raise ValueError(f"references must be >= 0, non_members >= 100, 0 < reference_scale <= 1: {self}")


def roc_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(score of a member > score of a non-member), ties counting half: the Mann-Whitney U over n1 * n0."""
    u = mannwhitneyu(members, non_members, alternative="two-sided").statistic
    return float(u) / (len(members) * len(non_members))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> float:
    """The share of members scored strictly above the threshold that lets at most floor(fpr * n0)
    non-members through (with fewer than 1 / fpr non-members: above every non-member)."""
    allowed = int(math.floor(fpr * len(non_members) + 1e-9))
    threshold = np.sort(non_members)[::-1][allowed] if allowed < len(non_members) else -np.inf
    return float(np.mean(members > threshold))


def attack_metrics(members: np.ndarray, non_members: np.ndarray) -> dict[str, float | int]:
    """AUC and TPR at 1% and 0.1% FPR of one attack's scores, with the counts behind them."""
    out: dict[str, float | int] = {"auc": roc_auc(members, non_members)}
    out |= {key: tpr_at_fpr(members, non_members, fpr) for key, fpr in FPRS.items()}
    return out | {"members": len(members), "non_members": len(non_members)}


def _hospitals(config: JobConfig) -> list[HospitalConfig]:
    if config.data.hospitals is not None:
        return list(config.data.hospitals)
    return [HospitalConfig(site_id=s.site_id, num_patients=s.num_patients, prevalence=s.prevalence,
                           scanner=ScannerConfig(**asdict(s.scanner)))
            for s in DEFAULT_HOSPITALS[: config.data.num_sites]]  # fmt: skip


def fresh_job(config: JobConfig, seed: int, patients: Callable[[int], int]) -> JobConfig:
    """The job's phantom federation drawn again under `seed`: the same hospitals (scanner, prevalence)
    or the same partition, each with `patients(n)` patients instead of n."""
    data = config.data
    if data.partition is not None:
        part = data.partition.model_copy(update={"num_patients": max(20, patients(data.partition.num_patients))})
        data = data.model_copy(update={"partition": part})
    else:
        hospitals = [h.model_copy(update={"num_patients": max(10, patients(h.num_patients))})
                     for h in _hospitals(config)]  # fmt: skip
        data = data.model_copy(update={"hospitals": hospitals, "num_sites": None})
    return config.model_copy(update={"seed": seed, "data": data})


def non_member_splits(config: JobConfig, count: int) -> dict[str, Split]:
    """At least `count` fresh scans per site (all of each fresh site's splits), from seed + NON_MEMBER_SEED."""
    from fedrad.run.simulate import build_sites

    if config.data.partition is None:
        job = fresh_job(config, config.seed + NON_MEMBER_SEED, lambda n: count)
    else:  # a partition cuts the pool by its own rule: grow the pool until the smallest site has `count`
        sizes = [len(s.train) + len(s.val) + len(s.test) for s in build_sites(config)]
        job = fresh_job(config, config.seed + NON_MEMBER_SEED, lambda n: n * math.ceil(count / min(sizes)))
    return {s.site_id: concat_splits([s.train, s.val, s.test]) for s in build_sites(job)}


def site_models(flat: Mapping[str, np.ndarray], site_ids: list[str], where: str) -> dict[str, Weights]:
    """The model each site's members are scored with: the one shared model, or each site's own
    (names prefixed `SITE/`, as local-only saves them). Anything else: AuditError."""
    if not any("/" in name for name in flat):
        return {site: dict(flat) for site in site_ids}
    owners = sorted({name.split("/", 1)[0] for name in flat})
    if not set(site_ids) <= set(owners):
        raise AuditError(f"{where}: holds models of {owners}, not of the sites {site_ids} (an ensemble's members "
                         "stay at their sites): the membership audit is not supported for it")  # fmt: skip
    return {site: {n.split("/", 1)[1]: a for n, a in flat.items() if n.startswith(f"{site}/")} for site in site_ids}


def build_model(task, weights: Weights, where: str) -> nn.Module:
    """The task's model with `weights`; a DP job's model (BatchNorm replaced by GroupNorm, Opacus) too."""
    from opacus.validators import ModuleValidator

    from fedrad.site.handler import load_weights
    from fedrad.site.training import SiteError

    model = task.build_model()
    if set(weights) != set(model.state_dict()):
        model = ModuleValidator.fix(model)
    try:
        load_weights(model, weights, where)
    except SiteError as exc:
        raise AuditError(str(exc)) from None
    return model.eval()


@torch.no_grad()
def confidences(model: nn.Module, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Per scan: the cross-entropy loss and phi = z_y - logsumexp_{j != y} z_j (log p_y - log(1 - p_y),
    computed from the logits so that a confident model does not round it to infinity)."""
    model.eval()
    losses, phis = [], []
    for i in range(0, len(split), 256):
        logits = model(torch.from_numpy(split.inputs[i : i + 256]))
        y = torch.from_numpy(split.targets[i : i + 256]).long()
        true = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)
        losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy())
        phis.append((true - others).numpy())
    return np.concatenate(losses), np.concatenate(phis)


def train_references(config: JobConfig, settings: AuditSettings) -> list[dict[str, Weights]]:
    """`settings.references` models trained as the job trains (its strategy, recipe and model) on fresh
    phantom draws that contain no member and no non-member; each as {site: the model scoring it}."""
    from fedrad.run.simulate import MethodRun, build_sites

    last_only = EvaluationConfig(every=config.train.rounds)  # evaluation is not what references are for
    references = []
    for k in range(settings.references):
        seed = config.seed + (k + 1) * REFERENCE_SEED
        job = fresh_job(config, seed, lambda n: int(round(n * settings.reference_scale)))
        job = job.model_copy(update={"evaluation": last_only})
        sites = build_sites(job)
        with tempfile.TemporaryDirectory(prefix="fedrad-reference-") as tmp:
            MethodRun(job, config.strategy.name, Path(tmp), sites).run()
            flat = load_file(str(Path(tmp) / "model.safetensors"))
        references.append(site_models(flat, [s.site_id for s in sites], f"reference model {k}"))
    return references


def membership_audit(
    config: JobConfig, task, targets: dict[str, Weights], members: dict[str, Split],
    non_members: dict[str, Split], references: list[dict[str, Weights]],
) -> dict:
    """Both attacks, per site and pooled. `targets`, `members`, `non_members` and each reference are
    keyed by site; the result's `membership` is the pooled metrics of the stronger attack (by AUC)."""
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"loss": {}, "reference": {}}
    for site, weights in targets.items():
        model = build_model(task, weights, f"site {site}")
        loss_in, phi_in = confidences(model, members[site])
        loss_out, phi_out = confidences(model, non_members[site])
        scores["loss"][site] = (-loss_in, -loss_out)
        if references:
            refs = [build_model(task, r[site], f"reference of site {site}") for r in references]
            mean_in = np.mean([confidences(m, members[site])[1] for m in refs], axis=0)
            mean_out = np.mean([confidences(m, non_members[site])[1] for m in refs], axis=0)
            scores["reference"][site] = (phi_in - mean_in, phi_out - mean_out)
    attacks = {}
    for name, by_site in scores.items():
        if not by_site:
            continue
        pooled = [np.concatenate([pair[i] for pair in by_site.values()]) for i in (0, 1)]
        per_site = {s: attack_metrics(*pair) for s, pair in by_site.items()}
        attacks[name] = {"pooled": attack_metrics(*pooled), "sites": per_site}
    stronger = max(attacks, key=lambda name: attacks[name]["pooled"]["auc"])
    return {
        "membership": {**attacks[stronger]["pooled"], "attack": stronger},
        "attacks": {name: a["pooled"] for name, a in attacks.items()},
        "sites": {site: {name: a["sites"][site] for name, a in attacks.items()} for site in targets},
        "populations": {
            "members": "each site's training split, regenerated from the job (build_sites)",
            "non_members": f"fresh phantom scans of the same hospitals, seed {config.seed + NON_MEMBER_SEED}",
            "references": f"{len(references)} model(s) trained as the job on fresh draws (seeds "
                          f"{config.seed} + k * {REFERENCE_SEED}, k = 1..{len(references)})",
        },
    }  # fmt: skip
