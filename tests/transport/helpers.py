"""Helpers for the transport tests: a dummy site, a client running in a thread, and a clock moved by hand.

Nothing here races a timer: a deadline passes when a test moves the `ManualClock` past it, a site
replies when the test opens its `gate`, and work done in a thread (`Background`) hands its result
or its exception back to the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

import grpc

from fedrad.pki.kits import SiteKit
from fedrad.transport import fedrad_pb2 as pb
from fedrad.transport import wire
from fedrad.transport.grpc_client import GrpcClient
from fedrad.transport.taskboard import TaskBoard
from fedrad.types import DataKind, Instruction, Reply

T = TypeVar("T")


class EchoSite:
    """A dummy site: returns the weights it received; with a `gate`, only once the test opens it."""

    def __init__(self, site_id: str, gate: threading.Event | None = None):
        self.site_id, self.gate = site_id, gate
        self.seen: list[Instruction] = []
        self.received = threading.Event()  # set when an instruction has arrived

    def handle(self, instruction: Instruction) -> Reply:
        self.seen.append(instruction)
        self.received.set()
        if self.gate is not None and not self.gate.wait(timeout=60):
            raise TimeoutError(f"site {self.site_id}: the test never opened the gate")
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload={DataKind.WEIGHTS: instruction.payload[DataKind.WEIGHTS]},
            num_examples=10,
            metrics={"train_loss": 0.25},
        )


class ManualClock:
    """The time a TaskBoard measures its deadlines by, moved only by `advance`.

    `wait_looked` returns once the board has read the clock since the last `advance`: the board
    has then judged its open tasks at the new time (it reads the clock under its lock, so a test
    that takes the lock afterwards sees the outcome).
    """

    def __init__(self) -> None:
        self._now, self._moves, self._looked_at = 0.0, 0, 0
        self._cond = threading.Condition()

    def __call__(self) -> float:
        with self._cond:
            self._looked_at = self._moves
            self._cond.notify_all()
            return self._now

    def advance(self, seconds: float, board: TaskBoard) -> None:
        with self._cond:
            self._now += seconds
            self._moves += 1
        board.wake()  # a board waiting for a deadline looks at the clock again

    def wait_looked(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._looked_at == self._moves, timeout=timeout_s):
                raise AssertionError("the board did not look at the clock after it moved")


class Background(Generic[T]):
    """`work()` in a thread; `result()` waits for it and returns its value or raises what it raised."""

    def __init__(self, work: Callable[[], T]):
        self._value: list[T] = []
        self._error: list[BaseException] = []
        self.done = threading.Event()

        def target() -> None:
            try:
                self._value.append(work())
            except BaseException as exc:  # handed to the test thread by result()
                self._error.append(exc)
            finally:
                self.done.set()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def result(self, timeout_s: float = 10.0) -> T:
        if not self.done.wait(timeout_s):
            raise AssertionError(f"the work in the background did not finish within {timeout_s} s")
        if self._error:
            raise self._error[0]
        return self._value[0]


@contextmanager
def collecting(
    board: TaskBoard, instructions: Sequence[Instruction], timeout_s: float, min_replies: int = 0,
    grace_s: float = 0.0,
) -> Iterator[list[Reply]]:
    """board.collect in a thread (as dispatch runs); the list holds its replies once the block ends."""
    replies: list[Reply] = []
    work = Background(lambda: board.collect(instructions, timeout_s, min_replies, grace_s))
    try:
        yield replies
    except BaseException:
        board.stop()  # the test failed: end the round, so that its thread does not outlive the test
        raise
    replies.extend(work.result())


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
    """Poll `condition` until it holds; the timeout only bounds a hung test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@contextmanager
def raw_channel(kit: SiteKit, port: int) -> Iterator[grpc.Channel]:
    """A site's own mTLS channel to a server on 127.0.0.1, for calls built by hand from the wire module."""
    credentials = grpc.ssl_channel_credentials(kit.ca_pem, kit.key_pem, kit.cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        yield channel


def work_call(channel: grpc.Channel, site_id: str, num_train: int = 0):
    """A raw Work call (a long poll): iterate it for the instruction's messages."""
    work = channel.unary_stream(wire.WORK_METHOD, pb.WorkRequest.SerializeToString, pb.ServerMessage.FromString)
    return work(pb.WorkRequest(site_id=site_id, num_train=num_train))


def submit_call(channel: grpc.Channel, messages: Iterator[pb.ClientMessage]):
    """A raw Submit call streaming `messages`: iterate it for the server's acknowledgements."""
    submit = channel.stream_stream(wire.SUBMIT_METHOD, pb.ClientMessage.SerializeToString, pb.SubmitAck.FromString)
    return submit(messages)


def held(messages: Sequence[pb.ClientMessage], release: threading.Event) -> Iterator[pb.ClientMessage]:
    """`messages`, then a stream held open (no more bytes, no end) until the test sets `release`."""
    yield from messages
    release.wait(timeout=60)
