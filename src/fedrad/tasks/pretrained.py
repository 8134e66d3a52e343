"""Initial weights from a file: the job's `task.init` (public pretraining, private fine-tuning).

A job may start from weights trained elsewhere (`bench/pretrain_public.py` trains them on public
phantom data, docs/privacy.md) instead of its seeded random initialisation. The file is a
safetensors file of the model's whole state_dict, named `task.init` (relative to the job YAML's
folder) with its digest `task.init_sha256`, which the job hash covers: what every site's admin
approves is the content, and a server that starts from another file runs another job.

`read_init` checks, each refusal one line naming the file (InitError): the digest; that the bytes
parse as safetensors (`fedrad.codec`, never pickle); that every tensor of the model is there with
its shape and dtype, and finite; and that the file holds nothing else. The first mismatching tensor,
in the model's order, is named.

    weights = read_init(Path("examples/phantom_dp_pretrained.safetensors"), digest, like=initial)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from fedrad.codec import CodecError, decode
from fedrad.types import Weights

_BATCHNORM_ONLY = ("running_mean", "running_var", "num_batches_tracked")


class InitError(ValueError):
    """A `task.init` file that cannot start the job's model; one line naming the file and the tensor."""


def _hint(name: str) -> str:
    if name.endswith(_BATCHNORM_ONLY):
        return (" (BatchNorm statistics: a file of a BatchNorm model for a GroupNorm one, or the reverse; "
                "local DP replaces BatchNorm by GroupNorm, task.norm 'group' builds it without DP)")
    return ""


def read_init(path: Path, sha256: str, like: Mapping[str, np.ndarray]) -> Weights:
    """The weights of `path`, in the order of `like` (the model's state_dict as numpy), checked against
    the job's `sha256` and against `like`'s names, shapes and dtypes; InitError, one line, otherwise."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise InitError(f"task.init {path}: cannot be read ({exc.strerror or exc}; a relative path is taken "
                        "from the job YAML's folder)") from None  # fmt: skip
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise InitError(f"task.init {path}: its sha256 is {digest}, the job's task.init_sha256 is {sha256} "
                        "(the file changed, or the job names another one)")  # fmt: skip
    try:
        weights = decode(blob)
    except CodecError as exc:
        raise InitError(f"task.init {path}: not a safetensors file of weights ({exc})") from None
    for name, expected in like.items():
        got = weights.get(name)
        if got is None:
            raise InitError(f"task.init {path}: the model's tensor {name!r} is not in the file{_hint(name)}")
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise InitError(f"task.init {path}: tensor {name!r} is {got.dtype} {list(got.shape)}, the model's is "
                            f"{expected.dtype} {list(expected.shape)} (see task.channels, task.in_channels, "
                            "task.num_classes)")  # fmt: skip
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            raise InitError(f"task.init {path}: tensor {name!r} has non-finite values")
    extra = sorted(set(weights) - set(like))
    if extra:
        raise InitError(f"task.init {path}: tensor {extra[0]!r} is not in the model ({len(extra)} such "
                        f"tensor(s)){_hint(extra[0])}")  # fmt: skip
    return {name: weights[name] for name in like}


def init_bytes(weights: Mapping[str, np.ndarray], metadata: Mapping[str, object] | None = None) -> bytes:
    """A `task.init` file's bytes: safetensors of `weights` with `metadata` as one JSON string (key
    "fedrad", keys sorted: the library writes several metadata keys in no fixed order). The same
    arrays and metadata give the same bytes."""
    # np.require, not np.ascontiguousarray: the latter makes a 0-d entry (num_batches_tracked) 1-d
    arrays = {name: np.require(np.asarray(weights[name]), requirements="C") for name in sorted(weights)}
    header = {"fedrad": json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    return save(arrays, metadata=header)


def sha256_of(path: Path) -> str:
    """The digest a job's `task.init_sha256` gives for the file at `path` (as `sha256sum` prints it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
