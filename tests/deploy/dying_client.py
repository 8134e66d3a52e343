"""`fedrad client` whose process kills itself (SIGKILL) the moment it receives its masked fit of round
FEDRAD_TEST_DIE_ROUND: after the key exchange, before its masked upload. A real client process and a
real kill, at the one point of the protocol the dropout-recovery test is about (a timed kill from
outside could land before the key exchange or after the upload).

    python -m tests.deploy.dying_client client --kit ... (fedrad's own command line)
"""

from __future__ import annotations

import os
import signal

from fedrad.cli import app
from fedrad.site import handler
from fedrad.types import DataKind

ROUND = int(os.environ["FEDRAD_TEST_DIE_ROUND"])
_fit = handler.Site._fit


def _dying_fit(self, instruction):
    if instruction.round == ROUND and DataKind.SECAGG in instruction.payload:
        print(f"site {self.site_id}: killed after the key exchange of round {ROUND}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return _fit(self, instruction)


handler.Site._fit = _dying_fit

if __name__ == "__main__":
    app(prog_name="fedrad")
