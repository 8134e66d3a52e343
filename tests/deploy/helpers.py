"""A federation on loopback: a provisioned project, a job, and fedrad server / client OS processes.

Ports: every server binds port 0 (the system picks a free one) and reports the port it bound, with
its pid, in its status.json; the clients dial that port (`--server`). No port is chosen by a probe
and bound later, so two suites running at once never meet on one port.
"""

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
KIT_PORT = 1  # the kits' port, which nothing here listens on: a client is always told the bound one
REPO = Path(__file__).resolve().parents[2]


class Federation:
    """Kits, job and data YAMLs under `root`; every process it starts is killed by `close`."""

    def __init__(self, root: Path, job: dict = JOB):
        self.root = root
        self.port: int | None = None  # the port the last server started bound (from its status.json)
        server = ServerSpec(hosts=("127.0.0.1",), port=KIT_PORT)
        self.kits = provision(ProjectSpec(name="deploy-test", server=server, sites=SITES), root / "kits")
        self.job = root / "job.yaml"
        self.job.write_text(yaml.safe_dump(job))
        for site in SITES:
            (root / f"{site}.yaml").write_text(yaml.safe_dump({"data": {"source": "phantom", "site_id": site}}))
        self.processes: list[subprocess.Popen] = []
        self._kept: socket.socket | None = None

    def _start(self, name: str, *args: str, cwd: Path | None = None, module: str = "fedrad.cli",
               env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
        env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | (env or {})
        if module != "fedrad.cli":  # a test's own entry point (tests.deploy.dying_client): importable from here
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", module, *args]
        with (self.root / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the handle
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd or self.root)
        self.processes.append(process)
        return process

    def server(
        self, out: Path, *extra: str, deadline_s: float = 30.0, port: int = 0, job: Path | str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        """Start `fedrad server` on 127.0.0.1:`port` (0: one the system picks) and wait until it reports
        the port it bound. A round waits `deadline_s` for a missing site (a loaded CI machine needs a
        generous one)."""
        args = ["--job", str(job or self.job), "--kit", str(self.kits.server), "--out", str(out), "--bind",
                f"127.0.0.1:{port}", "--deadline", str(deadline_s), "--poll", "1", "--wait-sites", "60", *extra]
        process = self._start("server", "server", *args, cwd=cwd)
        self.port = bound_port(out, process.pid, lambda: process.poll() is None, lambda: self.log("server"))
        return process

    def client(
        self, site: str, job: Path | str | None = None, data: Path | str | None = None, cwd: Path | None = None,
        module: str = "fedrad.cli", env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Start `fedrad client` for `site`, dialing the port the running server bound (`module`: another
        entry point with fedrad's command line, such as tests.deploy.dying_client)."""
        if self.port is None:
            raise RuntimeError("start the server first: a client dials the port the server bound")
        args = ["--kit", str(self.kits.sites[site]), "--data", str(data or self.root / f"{site}.yaml"),
                "--job", str(job or self.job), "--server", f"127.0.0.1:{self.port}", "--backoff-cap", "1"]
        return self._start(site, "client", *args, cwd=cwd, module=module, env=env)

    def keep_port(self) -> None:
        """Keep the running server's port for the server that replaces it (`--resume`, `port=self.port`).

        The admin of a real federation restarts the server on its fixed port; here that port was
        chosen by the system, and once the server dies another process could take it. So a socket of
        this process binds it beside the server's (both with SO_REUSEPORT, which gRPC sets) until
        `close`; it never listens, so it takes no connection, and no other program can bind the port.
        """
        if self.port is None:
            raise RuntimeError("no server has reported its port yet")
        kept = socket.socket()
        kept.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        kept.bind(("127.0.0.1", self.port))
        self._kept = kept

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
                process.wait()
        if self._kept is not None:
            self._kept.close()


def status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def bound_port(
    out: Path, pid: int, alive: Callable[[], bool] = lambda: True, log: Callable[[], str] = lambda: "",
    timeout_s: float = 120,
) -> int:
    """The port the server process `pid` reports in OUT/status.json once it listens (not an earlier
    server's: a resumed one finds its predecessor's file); AssertionError if it exits first."""
    found: list[int] = []

    def listening() -> bool:
        doc = status(out)
        if doc.get("pid") == pid and doc.get("port"):
            found.append(doc["port"])
            return True
        if not alive():
            raise AssertionError(f"the server exited before it listened:\n{log()}")
        return False

    wait_for(listening, timeout_s, "the server to report the port it bound")
    return found[0]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; the timeout only bounds a hung run, it is no part of the check."""
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
