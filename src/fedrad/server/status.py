"""The server's status file: each site's state in the current round and in every completed one.

`fedrad server` rewrites `DIR/status.json` atomically about once a second; `fedrad status DIR`
prints it. Live states: connected (polling for work), waiting (work queued, not yet picked up),
training / evaluating (instruction delivered), uploading (its reply announced: waiting for its
turn, or being read), submitted, disconnected, refused. Each site's bytes on the wire (serialized
protobuf, both directions) are counted since the server started. Completed rounds: submitted,
or the kind of the site's failure (`fedrad.types.FailureKind`: timeout, dropped, rejected,
refused, error, budget), with " in evaluation" when it trained but its evaluation failed; read
from the failure's kind, never from its message. `late` counts replies that arrived after their
deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from fedrad.server.orchestrator import RoundRecord
from fedrad.server.results import atomic_write

STATUS_FILE = "status.json"


def live_state(site: dict, poll_s: float) -> str:
    """One site's state from a TaskBoard.snapshot() entry."""
    tasks = site["tasks"]
    if any(t.get("uploading") for t in tasks):
        return "uploading"
    if any(t["delivered"] and not t["answered"] for t in tasks):
        kind = next(t["kind"] for t in tasks if t["delivered"] and not t["answered"])
        return "training" if kind == "fit" else "evaluating"
    if tasks and all(t["answered"] for t in tasks):
        return "submitted"
    if site["refused"] and site["last_seen_s"] is None:
        return "refused"
    seen = site["last_seen_s"]
    if seen is not None and seen <= poll_s + 10:
        return "waiting" if tasks else "connected"
    return "disconnected"


def round_states(record: RoundRecord) -> dict[str, str]:
    """What became of each asked site in a completed round: submitted, or its failure's kind."""
    states = {site: "submitted" for site in record.asked}
    for failure in record.failures:
        if failure.phase == "train":
            states[failure.site_id] = str(failure.kind)
    for failure in record.failures:  # a site lost after it trained shows here
        if failure.phase != "train" and states.get(failure.site_id, "submitted") == "submitted":
            states[failure.site_id] = f"{failure.kind} in evaluation"
    return states


class StatusFile:
    """Writes status.json from the server's phase, the board's snapshot and the completed rounds."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, dict]], poll_s: float, every_s: float = 0.5):
        self.path, self.snapshot, self.poll_s, self.every_s = Path(path), snapshot, poll_s, every_s
        self.fields: dict = {"phase": "starting", "round": None, "rounds": [], "error": None}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._writing = threading.Lock()  # the loop and update() both write: one temporary file at a time
        self._thread = threading.Thread(target=self._loop, name="fedrad-status", daemon=True)

    def __enter__(self) -> StatusFile:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.write()

    def update(self, **fields) -> None:
        with self._lock:
            self.fields.update(fields)
        self.write()

    def completed(self, record: RoundRecord) -> None:
        line = {"round": record.round, "sites": round_states(record),
                "failures": [asdict(failure) for failure in record.failures]}
        with self._lock:
            self.fields["rounds"] = [*self.fields["rounds"], line]
        self.write()

    def write(self) -> None:
        snapshot = self.snapshot()
        with self._lock:
            doc = dict(self.fields, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        doc["sites"] = {
            site: {"state": live_state(entry, self.poll_s), "last_seen_s": entry["last_seen_s"],
                   "late": entry["late"], "refused": entry["refused"],
                   "mb_to_site": round(entry.get("bytes_to_site", 0) / 2**20, 3),
                   "mb_from_site": round(entry.get("bytes_from_site", 0) / 2**20, 3)}
            for site, entry in snapshot.items()
        }
        with self._writing:
            atomic_write(self.path, json.dumps(doc, indent=2).encode())

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()


def read_status(folder: Path) -> dict:
    """The status.json of a server's output folder (a folder or the file itself)."""
    path = Path(folder)
    path = path / STATUS_FILE if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
