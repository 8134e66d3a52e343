"""Transports carry Instructions to sites and Replies back: in-process now, gRPC + mTLS later."""

from __future__ import annotations

from fedrad.transport.inprocess import InProcessTransport, Transport

__all__ = ["InProcessTransport", "Transport"]
