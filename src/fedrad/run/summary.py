"""summary.json, the same contract from the simulator and from `fedrad server`, and the run's health.

`health` reads the round lines (metrics.jsonl), the summary and the final model and says whether
the result can be used: `ok`, `degraded` (a result, with something the user must know) or `failed`
(no usable result). Each reason is one short line naming the site, the rounds and the kind.

failed:
1) no update was ever accepted (or no round completed); a deployed round short of its quorum; the
   server stopped on an exception (`stopped`);
2) no pooled value of the primary metric (never evaluated, or every site's evaluation failed);
3) the final model holds non-finite values (diverged);
4) the model collapsed: every pooled prediction in one class (segmentation: no lesion predicted
   anywhere on a test set with lesions) after an earlier evaluation scored clearly better on the
   primary metric: by max(LEARNT_MARGIN, 1 / sqrt(num_test)), more than chance moves a score on a
   test set of that size. It had learnt, and lost it. A model that collapsed without having learnt
   (a short run; the tiny test job, whose early models hover around chance) is degraded.
degraded:
5) any training or evaluation failure, one line per site, phase and kind;
6) a site none of whose updates was accepted (all rejected, say) gets a line of its own;
7) the run was interrupted;
8) a round kept the previous model (its aggregate was not finite, or aggregation raised: the round's
   `notes`, from metrics.jsonl or from the summary's `notes`), or no update was accepted in a round
   that asked sites (the model stood still), when some other round's update was accepted.
Per-site models (local-only's `cross_site`): one model that diverged or collapsed is degraded;
all of them is as for the shared model.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from fedrad.server.evaluation import summarize
from fedrad.server.ledger import Ledger
from fedrad.server.orchestrator import RoundRecord
from fedrad.strategies import registry
from fedrad.strategies.base import GLOBAL, ServerState

OK, DEGRADED, FAILED = "ok", "degraded", "failed"
SEVERITY = {OK: 0, DEGRADED: 1, FAILED: 2}
EXIT_CODES = {OK: 0, DEGRADED: 3, FAILED: 4}  # documented in README.md and docs/deploy.md
Reason = tuple[str, str]  # (the status it calls for, the line)
LEARNT_MARGIN = 0.1  # primary metric above the collapsed value: what "it had learnt" means (rule 4)


def run_summary(
    method: str, records: list[RoundRecord], ledger: Ledger, wall_s: float, interrupted: bool,
    num_train: dict[str, int] | None = None,  # None: not known (the deployed server never sees the data)
) -> dict:
    """summary.json: the same contract from the simulator and from `fedrad server` (status added by `with_health`)."""
    evaluated = [r for r in records if r.evaluations]
    last = evaluated[-1].evaluations if evaluated else {}
    pooled, sites = summarize(last) if last else ({}, {})
    extra = {}
    if last and GLOBAL not in last:  # one model per site: the cross-site matrix (model x test set)
        extra["cross_site"] = {name: {"pooled": e.pooled, "sites": e.sites} for name, e in last.items()}
    counts = num_train or {}
    return {
        "method": method,
        "simulation_only": registry.get(method).simulation_only,
        "rounds": len(records),
        "wall_s": round(wall_s, 3),
        "interrupted": interrupted,
        "pooled": pooled,
        "sites": {s: {**m, **({"num_train": counts[s]} if s in counts else {})} for s, m in sites.items()},
        "failures": sum(len(r.failures) for r in records),
        "ledger": ledger.summary(),
        "notes": [note for r in records for note in r.notes],  # run-level: a round that kept the old model
        **extra,
    }


def with_health(
    summary: dict, lines: Sequence[Mapping], final_state: ServerState | None = None, quorum: str | None = None,
    stopped: str | None = None,
) -> dict:
    """The summary with `status` and `status_reasons` (see `health`)."""
    status, reasons = health(lines, summary, final_state, quorum, stopped)
    return summary | {"status": status, "status_reasons": reasons}


def health(
    lines: Sequence[Mapping], summary: Mapping, final_state: ServerState | None = None, quorum: str | None = None,
    stopped: str | None = None,
) -> tuple[str, list[str]]:
    """(status, reasons) of a run from its metrics.jsonl lines, its summary and its final model.

    `quorum`: why a deployed run stopped short of its quorum (QuorumError), if it did; `stopped`:
    the exception that stopped the server's round loop, in one line, if one did.
    """
    reasons = [
        *([(FAILED, f"quorum not met: {_short(quorum, 200)}")] if quorum else []),
        *([(FAILED, f"the server stopped: {_short(stopped, 200)}")] if stopped else []),
        *_updates(lines),
        *_pooled(lines, summary),
        *_non_finite(final_state),
        *_collapse(lines, summary),
        *_kept(lines, summary),
        *_failures(lines),
        *([(DEGRADED, f"interrupted after {len(lines)} round(s)")] if summary.get("interrupted") else []),
    ]
    status = max((level for level, _ in reasons), key=SEVERITY.__getitem__, default=OK)
    return status, [line for level in (FAILED, DEGRADED) for lvl, line in reasons if lvl == level]


def worst(statuses: Iterable[str]) -> str:
    """The most severe of several runs' statuses (`fedrad compare`)."""
    return max(statuses, key=SEVERITY.__getitem__, default=OK)


def exit_code(status: str, strict: bool = False) -> int:
    """0 ok; degraded: 3 with --strict, else 0; failed: 4."""
    return EXIT_CODES[status] if status != DEGRADED or strict else 0


def _updates(lines: Sequence[Mapping]) -> Iterator[Reason]:
    """1) and 6): was any update accepted, and which sites had none accepted."""
    asked = Counter(site for line in lines for site in line["asked"])
    accepted = Counter(site for line in lines for site in line["train"])
    if not lines:
        yield FAILED, "no round completed"
    elif not accepted:
        yield FAILED, f"no update was accepted in {len(lines)} round(s)"
    for site, times in asked.items():
        if accepted[site]:
            continue
        kinds = Counter(f["kind"] for line in lines for f in line["failures"]
                        if f["site_id"] == site and f["phase"] == "train")
        if set(kinds) == {"rejected"}:
            yield DEGRADED, f"site {site}: every update rejected ({times} of {times} round(s) asked)"
        else:
            counted = ", ".join(f"{kind} {n}" for kind, n in kinds.items()) or "no reply"
            yield DEGRADED, f"site {site}: no update accepted in {times} round(s) asked ({counted})"


def _kept(lines: Sequence[Mapping], summary: Mapping) -> Iterator[Reason]:
    """8) rounds that left the model as it was: a refused aggregate, or no update accepted."""
    notes = [note for line in lines for note in line.get("notes", ())] + list(summary.get("notes", ()))
    for note in dict.fromkeys(notes):  # a note both in metrics.jsonl and in the summary counts once
        yield DEGRADED, note
    if any(line["train"] for line in lines):  # otherwise 1) failed the run already
        still = [line["round"] for line in lines if line["asked"] and not line["train"]]
        if still:
            many = len(still) > 1
            yield DEGRADED, f"round{'s' if many else ''} {_ranges(still)}: no update accepted; the model stood still"


def _pooled(lines: Sequence[Mapping], summary: Mapping) -> Iterator[Reason]:
    """2) a pooled value of the run's primary metric."""
    metric = summary.get("metric", "balanced_accuracy")
    value = summary.get("pooled", {}).get(metric)
    if value is not None and math.isfinite(value):
        return
    evaluation_failures = sum(f["phase"] == "evaluate" for line in lines for f in line["failures"])
    why = f"{evaluation_failures} evaluation failure(s)" if evaluation_failures else "the method was never evaluated"
    yield FAILED, f"no pooled {metric}: {why}"


def _non_finite(state: ServerState | None) -> Iterator[Reason]:
    """3) NaN or infinity in the final model(s)."""
    if state is None:
        return
    counts = {name: sum(int(np.count_nonzero(~np.isfinite(a))) for a in weights.values() if a.dtype.kind in "fc")
              for name, weights in state.models.items()}
    bad = {name: n for name, n in counts.items() if n}
    for name, n in bad.items():
        level = FAILED if name == GLOBAL or len(bad) == len(counts) else DEGRADED
        who = "the final model" if name == GLOBAL else f"model {name}"
        yield level, f"{who} diverged: {n} non-finite value(s) in its weights"


def _collapsed(pooled: Mapping) -> str | None:
    """How a model's pooled predictions collapsed to one class, or None."""
    if pooled.get("true_classes", 0) > 1 and pooled.get("predicted_classes", 2) <= 1:
        return f"every pooled prediction is one class (the test set has {pooled['true_classes']})"
    if pooled.get("true_foreground", 0) > 0 and pooled.get("predicted_foreground", 1) == 0:
        return "no lesion predicted anywhere on a test set with lesions"
    return None


def _collapse(lines: Sequence[Mapping], summary: Mapping) -> Iterator[Reason]:
    """4) one predicted class at the end: failed if an earlier evaluation had clearly learnt."""
    metric = summary.get("metric", "balanced_accuracy")
    cross = summary.get("cross_site")
    models = {name: entry["pooled"] for name, entry in cross.items()} if cross else {GLOBAL: summary.get("pooled", {})}
    collapsed = {name: why for name, pooled in models.items() if (why := _collapsed(pooled))}
    evaluated = [line["pooled"] for line in lines if line.get("pooled")]  # per-site models: their mean
    earlier = [pooled.get(metric) for pooled in evaluated[:-1]]  # the last is the summary's
    best = max((v for v in earlier if v is not None and math.isfinite(v)), default=None)
    for name, why in collapsed.items():
        who, final = "the model" if name == GLOBAL else f"model {name}", models[name].get(metric)
        size = models[name].get("num_test") or 0
        margin = max(LEARNT_MARGIN, 1 / math.sqrt(size)) if size else LEARNT_MARGIN
        if best is not None and final is not None and best >= final + margin and len(collapsed) == len(models):
            yield FAILED, f"{who} collapsed (diverged): {why}; pooled {metric} {final:.3f}, earlier {best:.3f}"
        else:
            yield DEGRADED, f"{who} has not learnt to separate: {why}"


def _failures(lines: Sequence[Mapping]) -> Iterator[Reason]:
    """5) one line per site, phase and kind: the rounds, and the first reason."""
    groups: dict[tuple[str, str, str], list[tuple[int, str]]] = defaultdict(list)
    for line in lines:
        for f in line["failures"]:
            groups[(f["site_id"], f["phase"], f["kind"])].append((line["round"], f["reason"]))
    for (site, phase, kind), seen in groups.items():
        what = "training" if phase == "train" else "evaluation"
        numbers = sorted({r for r, _ in seen})
        rounds = f"round{'s' if len(numbers) > 1 else ''} {_ranges(numbers)}"
        first = _short(seen[0][1].removeprefix(f"site {site}: "))
        yield DEGRADED, f"site {site}: {kind} in {what}, {rounds}: {first}"


def _ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
