"""A deployment on real site files (`data.source: sites`): `fedrad server` and three `fedrad client`
OS processes on loopback with mutual TLS, each opening the one job file by another path.

The job hash is of the job's content, not of the path it was opened by, so the server and the
clients agree on it; each hospital reads its own site YAML (a tabular CSV written here), and the
deployed run gives the simulator's model, the simulator reading the same site YAMLs from the job.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedrad.config import load_config
from fedrad.run.federation import load_federation
from fedrad.run.simulate import MethodRun
from tests.data.conftest import write_csv

from .helpers import SITES, Federation, assert_same_model, finish, status

pytestmark = pytest.mark.slow

ROUNDS = 2
SITES_JOB = {
    "name": "deploy-sites",
    "seed": 5,
    "data": {"source": "sites", "sites": [f"{site}/site.yaml" for site in SITES]},  # relative to the job file
    # the deployed server has no data to size the model from: the job declares it
    "task": {"kind": "tabular", "hidden": [8], "in_channels": 4, "num_classes": 2},
    "train": {"rounds": ROUNDS, "batch_size": 8, "lr": 0.1},
}


def _tabular_site(folder: Path, site: str, n: int, shift: float, seed: int) -> Path:
    """A hospital's CSV of four features with a linear, site-shifted label rule, and its site YAML."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, (n, 4))
    label = (x[:, 0] + x[:, 1] > 2 * shift).astype(int)
    folder.mkdir(parents=True)
    rows = [[f"{site}-{i}", *np.round(x[i], 4), label[i]] for i in range(n)]
    write_csv(folder / "records.csv", ["record", "f1", "f2", "f3", "f4", "label"], rows)
    site_yaml = folder / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({"site_id": site, "data": {
        "source": "tabular", "path": "records.csv", "exclude_columns": ["record"], "seed": seed}}))  # fmt: skip
    return site_yaml


def _printed_hash(log: str) -> str:
    found = re.search(r"hash ([0-9a-f]{64})", log)
    assert found is not None, log
    return found.group(1)


def test_server_and_clients_opening_the_job_by_different_paths_run_a_sites_job(tmp_path: Path) -> None:
    # Prepare: the job and the three hospitals' files in one folder; another folder links to it.
    federation = Federation(tmp_path)
    project = tmp_path / "project"
    site_yamls = {site: _tabular_site(project / site, site, n, shift, seed) for site, n, shift, seed
                  in [("s1", 60, 0.0, 1), ("s2", 48, 0.5, 2), ("s3", 40, -0.5, 3)]}  # fmt: skip
    job = project / "job.yaml"
    job.write_text(yaml.safe_dump(SITES_JOB))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(project, target_is_directory=True)
    out = tmp_path / "run"

    # Execute: the server opens job.yaml from its folder; s1 by its absolute path, s2 from its own
    # folder (../job.yaml), s3 through a link from another folder (../linked/job.yaml).
    try:
        server = federation.server(out, job="job.yaml", cwd=project)
        clients = [
            federation.client("s1", job=job.resolve(), data=site_yamls["s1"], cwd=tmp_path),
            federation.client("s2", job="../job.yaml", data="site.yaml", cwd=project / "s2"),
            federation.client("s3", job="../linked/job.yaml", data="../linked/s3/site.yaml",
                              cwd=tmp_path / "elsewhere"),
        ]
        summary = finish(federation, server, out)
        assert [client.wait(timeout=60) for client in clients] == [0, 0, 0], federation.log("s3")
    finally:
        federation.close()

    # Assert: one hash everywhere, every round complete, every site trained and evaluated
    hashes = {name: _printed_hash(federation.log(name)) for name in ("server", *SITES)}
    assert len(set(hashes.values())) == 1, hashes
    assert hashes["server"] == load_config(tmp_path / "linked" / "job.yaml").job_hash()
    final = status(out)
    assert final["phase"] == "done" and final["job_hash"] == hashes["server"]
    assert [r["sites"] for r in final["rounds"]] == [dict.fromkeys(SITES, "submitted")] * ROUNDS
    assert summary["rounds"] == ROUNDS and summary["failures"] == 0
    assert set(summary["sites"]) == set(SITES) and all(m["num_test"] > 0 for m in summary["sites"].values())
    assert summary["pooled"]["num_test"] == sum(m["num_test"] for m in summary["sites"].values())
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["data"]["sites"] == SITES_JOB["data"]["sites"]  # the job as written, as hashed

    # The simulator, reading the same site YAMLs from the job's folder, gives the same model and metrics.
    config = load_config(job)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the clients (OMP_NUM_THREADS=1): float sums depend on the thread count
    try:
        simulated = MethodRun(config, "fedavg", tmp_path / "simulated", load_federation(config).sites).run()
    finally:
        torch.set_num_threads(threads)
    assert_same_model(out, tmp_path / "simulated")
    assert summary["pooled"] == simulated["pooled"]
