"""A site's own state between fits: kept at the site, in a file next to its data, never sent anywhere.

What one fit leaves for the next (`FitState`): the whole model after it (`local`: FedBN's
BatchNorm, an ensemble member), SCAFFOLD's c_i (`control`) and the privacy it has spent (local
DP, `fedrad.privacy.local`: the Opacus accountant's history after the fit, and its epsilon).
`SiteState` holds the last fit's state and the one that fit started from, so an instruction for
the round already fitted (its reply was lost, the client restarted before sending it, the server
resumed from its checkpoint) starts where that fit started and gives the same reply bit for bit,
instead of training twice, and spends its privacy budget once.

`SiteStateFile` is one safetensors file: tensors `local/NAME`, `control/NAME` (the last fit) and
`before/local/NAME`, `before/control/NAME` (what it started from); in the metadata the format and
version, the job hash, the site id, both rounds and both fits' privacy (`privacy`,
`before_privacy`: the accountant's history as [noise, sample rate, steps] lists, and
`epsilon_spent`). It is written atomically (temporary file, fsync, rename) after every fit, before
the reply leaves, and read back when the client starts. A file of another job or site is ignored
with a log line, never mixed in; one that cannot be read is a one-line error naming it.

Version 1 files (written before privacy was accounted) are read with their spend unknown
(`privacy_history` None): a site without local DP uses them as before; a site with local DP
refuses them (`fedrad.site.handler`), since what their fits spent cannot be known.

    state_file = SiteStateFile(Path("data/.fedrad-state/hospital-a-0123abcd.safetensors"), job_hash, "hospital-a")
    state = state_file.load() or SiteState()
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from fedrad.types import Weights

log = logging.getLogger(__name__)
FORMAT, VERSION = "fedrad-site-state", 2  # 2: the privacy spent joined the metadata
STATE_FOLDER = ".fedrad-state"  # beside the site's data YAML


class SiteStateError(ValueError):
    """A state file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class FitState:
    """What one fit leaves at a site; the empty FitState is a site that has not trained (or lost its state)."""

    round: int = -1  # the round of that fit; -1: none
    local: Weights | None = None  # the whole model after the fit
    control: Weights | None = None  # SCAFFOLD's c_i after the fit (None: zeros, as for a new site)
    # Local DP: the accountant's history after this fit ((noise, sample rate, steps), cumulative over
    # the job) and its epsilon; per fit, so that a repeated round does not spend it twice.
    # None: unknown (a version-1 file, written before fedrad accounted privacy).
    privacy_history: tuple[tuple[float, float, int], ...] | None = ()
    epsilon_spent: float = 0.0


@dataclass(frozen=True)
class SiteState:
    """The last fit's state and the state that fit started from."""

    last: FitState = field(default_factory=FitState)
    before: FitState = field(default_factory=FitState)

    def start(self, round: int) -> FitState:
        """What a fit for `round` starts from.

        The last fit's state; for a repeat of that round, what it started from; for an earlier
        round, nothing: a server that resumes never goes back past a site's last fit (it
        checkpoints each round before the next one's instructions leave), so this is a new run
        of the same job.
        """
        if round == self.last.round:
            return self.before
        return self.last if round > self.last.round else FitState()

    def after(self, round: int, result: FitState) -> SiteState:
        """The state once the fit for `round` produced `result`."""
        return SiteState(last=result, before=self.start(round))


def default_state_path(data_path: Path, site_id: str, job_hash: str) -> Path:
    """`<the data YAML's folder>/.fedrad-state/<site>-<job hash prefix>.safetensors`: one file per job."""
    return Path(data_path).parent / STATE_FOLDER / f"{site_id}-{job_hash[:12]}.safetensors"


class SiteStateFile:
    """One site's state for one job, on disk."""

    def __init__(self, path: Path, job_hash: str, site_id: str):
        self.path, self.job_hash, self.site_id = Path(path), job_hash, site_id

    def save(self, state: SiteState) -> None:
        tensors = _tensors("", state.last) | _tensors("before/", state.before)
        meta = {"format": FORMAT, "version": VERSION, "job_hash": self.job_hash, "site_id": self.site_id,
                "round": state.last.round, "before_round": state.before.round,
                "privacy": _privacy_meta(state.last), "before_privacy": _privacy_meta(state.before)}
        _atomic_write(self.path, save(tensors, metadata={"fedrad": json.dumps(meta)}))

    def load(self) -> SiteState | None:
        """The saved state; None when there is no file, or (logged) when it is another job's or site's."""
        if not self.path.exists():
            return None
        try:
            blob = self.path.read_bytes()
            tensors, meta = load(blob), _metadata(blob)
            if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
                raise ValueError(f"format {meta.get('format')!r}, version {meta.get('version')!r}")
            if meta["version"] > VERSION:
                raise ValueError(f"version {meta['version']} is newer than this fedrad's {VERSION}")
            owner = (meta.get("job_hash"), meta.get("site_id"))
            if owner != (self.job_hash, self.site_id):
                log.warning("%s: state of site %s for job %s, not site %s for job %s: ignored "
                            "(replaced at the next fit)", self.path, owner[1], str(owner[0])[:12], self.site_id,
                            self.job_hash[:12])
                return None
            last = _fit_state(tensors, "", meta["round"], _privacy(meta, "privacy"))
            before = _fit_state(tensors, "before/", meta["before_round"], _privacy(meta, "before_privacy"))
            state = SiteState(last, before)
        except Exception as exc:  # safetensors, JSON, a missing key: all mean the same to the admin
            raise SiteStateError(f"{self.path}: not a readable fedrad site state file ({exc}); "
                                 "move it away to start this site afresh") from exc
        log.info("%s: site %s continues from its state after round %d", self.path, self.site_id, state.last.round)
        return state


def _tensors(prefix: str, state: FitState) -> dict[str, np.ndarray]:
    parts = {"local": state.local or {}, "control": state.control or {}}
    # np.require, not np.ascontiguousarray, which would make num_batches_tracked (0-d) 1-d
    return {f"{prefix}{part}/{n}": np.require(a, requirements="C") for part, ws in parts.items() for n, a in ws.items()}


def _fit_state(tensors: dict[str, np.ndarray], prefix: str, round: int, privacy: tuple) -> FitState:
    def part(name: str) -> Weights | None:
        start = f"{prefix}{name}/"
        return {k[len(start) :]: a for k, a in tensors.items() if k.startswith(start)} or None

    history, epsilon = privacy
    return FitState(int(round), part("local"), part("control"), history if int(round) >= 0 else (), epsilon)


def _privacy_meta(state: FitState) -> dict | None:
    if state.privacy_history is None:
        return None
    return {"history": [list(entry) for entry in state.privacy_history], "epsilon_spent": state.epsilon_spent}


def _privacy(meta: dict, key: str) -> tuple[tuple[tuple[float, float, int], ...] | None, float]:
    """(history, epsilon spent) from the metadata; (None, 0.0) for a version-1 file (not accounted)."""
    if meta["version"] < 2 or meta.get(key) is None:
        return None, 0.0
    entry = meta[key]
    history = tuple((float(s), float(q), int(n)) for s, q, n in entry["history"])
    return history, float(entry["epsilon_spent"])


def _metadata(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    meta = json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["fedrad"])
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a JSON object")
    return meta


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)
