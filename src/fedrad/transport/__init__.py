"""Transports carry Instructions to sites and Replies back: in-process now, gRPC + mTLS later."""

from __future__ import annotations

from fedrad.transport.base import Transport
from fedrad.transport.inprocess import InProcessTransport

__all__ = ["InProcessTransport", "Transport"]
