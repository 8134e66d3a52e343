"""A federation on loopback: a provisioned project, a job, and fedrad server / client OS processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.numpy import load_file

from fedrad.config import JobConfig
from fedrad.pki.provision import ProjectSpec, ServerSpec, provision
from fedrad.run.simulate import MethodRun, build_sites
from tests.tiny import tiny_job

SITES = ("s1", "s2", "s3")
JOB = tiny_job(name="deploy-tiny", train={"rounds": 3})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Federation:
    """Kits, job and data YAMLs under `root`; every process it starts is killed by `close`."""

    def __init__(self, root: Path, job: dict = JOB):
        self.root, self.port = root, free_port()
        server = ServerSpec(hosts=("127.0.0.1",), port=self.port)
        self.kits = provision(ProjectSpec(name="deploy-test", server=server, sites=SITES), root / "kits")
        self.job = root / "job.yaml"
        self.job.write_text(yaml.safe_dump(job))
        for site in SITES:
            (root / f"{site}.yaml").write_text(yaml.safe_dump({"data": {"source": "phantom", "site_id": site}}))
        self.processes: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "fedrad.cli", *args]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        self.processes.append(process)
        return process

    def server(self, out: Path, *extra: str, deadline_s: float = 30.0) -> subprocess.Popen:
        """A round waits `deadline_s` for a missing site (a loaded CI machine needs a generous one)."""
        args = ["--job", str(self.job), "--kit", str(self.kits.server), "--out", str(out), "--bind",
                f"127.0.0.1:{self.port}", "--deadline", str(deadline_s), "--poll", "1", "--wait-sites", "30", *extra]
        return self._start("server", "server", *args)

    def client(self, site: str) -> subprocess.Popen:
        args = ["--kit", str(self.kits.sites[site]), "--data", str(self.root / f"{site}.yaml"),
                "--job", str(self.job), "--backoff-cap", "1"]
        return self._start(site, "client", *args)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"gave up waiting for {what} after {timeout_s} s")


def finish(federation: Federation, server: subprocess.Popen, out: Path, timeout_s: float = 240) -> dict:
    """Wait for the server to exit 0 (generous: CI machines running other suites are slow); its summary."""
    try:
        code = server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server did not finish:\n{federation.log('server')}") from None
    assert code == 0, federation.log("server")
    return json.loads((out / "summary.json").read_text())


def simulate(job: dict, out: Path) -> dict:
    """The in-process simulator on `job` (its strategy.name), one torch thread as the clients; its summary."""
    config = JobConfig.model_validate(job)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the clients (OMP_NUM_THREADS=1): float sums depend on the thread count
    try:
        return MethodRun(config, config.strategy.name, out, build_sites(config)).run()
    finally:
        torch.set_num_threads(threads)


def assert_same_model(deployed: Path, simulated: Path) -> None:
    """The two model.safetensors hold the same tensors, bit for bit."""
    expected, got = load_file(simulated / "model.safetensors"), load_file(deployed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name].reshape(array.shape), array, err_msg=name)
