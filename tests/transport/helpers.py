"""Helpers for the transport tests: a dummy site and a client running in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fedrad.transport.grpc_client import GrpcClient
from fedrad.types import DataKind, Instruction, Reply


class EchoSite:
    """A dummy site: returns the weights it received, after an optional delay."""

    def __init__(self, site_id: str, delay_s: float = 0.0):
        self.site_id, self.delay_s = site_id, delay_s
        self.seen: list[Instruction] = []

    def handle(self, instruction: Instruction) -> Reply:
        self.seen.append(instruction)
        time.sleep(self.delay_s)
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload={DataKind.WEIGHTS: instruction.payload[DataKind.WEIGHTS]},
            num_examples=10,
            metrics={"train_loss": 0.25},
        )


@contextmanager
def running(client: GrpcClient) -> Iterator[list[BaseException]]:
    """Run a client in a thread; yields the list that receives the exception `run` ended with."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            client.run()
        except BaseException as exc:  # handed to the test, which asserts on it
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        client.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the client did not stop"


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
