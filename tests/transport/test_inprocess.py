"""The in-process transport: a site's exception becomes a failed Reply of the exception's kind."""

from __future__ import annotations

import pytest

from fedrad.site.training import SiteError
from fedrad.transport.inprocess import InProcessTransport
from fedrad.types import FailureKind, Instruction, InstructionKind


class _Raising:
    def __init__(self, exc: Exception):
        self.exc = exc

    def handle(self, instruction):
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (SiteError("site a: instruction for job 'x' refused"), FailureKind.REFUSED),
        (SiteError("site has too few training examples (1) for one batch", FailureKind.ERROR), FailureKind.ERROR),
        (RuntimeError("disk full"), FailureKind.ERROR),
    ],
)
def test_a_sites_exception_is_a_failed_reply_of_its_kind(exc, kind):
    [reply] = InProcessTransport({"a": _Raising(exc)}).dispatch([Instruction(0, "a", InstructionKind.FIT, {})])
    assert not reply.ok and reply.error_kind == kind and str(exc) in reply.error


def test_an_instruction_for_a_site_not_in_the_federation_is_dropped():
    [reply] = InProcessTransport({}).dispatch([Instruction(0, "ghost", InstructionKind.FIT, {})])
    assert reply.error_kind == FailureKind.DROPPED and "no site named 'ghost'" in reply.error
