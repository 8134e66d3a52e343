"""A hospital: its data (which never leaves) and the local training / evaluation it performs.

A Site answers Instructions with Replies and nothing else crosses its boundary: weights come in
and go out as safetensors bytes, evaluation goes out as aggregate statistics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedrad.codec import decode, encode
from fedrad.data.base import SiteData, Split
from fedrad.types import DataKind, FitConfig, Instruction, InstructionKind, Reply, Weights


class SiteError(ValueError):
    """An instruction this site refuses (wrong job, missing weights, names that do not match)."""


def model_weights(model: nn.Module) -> Weights:
    """A model's state_dict as named numpy arrays (shares memory with the model)."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in model.state_dict().items()}


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray], site_id: str) -> None:
    expected = set(model.state_dict())
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise SiteError(f"site {site_id}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    model.load_state_dict({name: torch.from_numpy(np.array(a, copy=True)) for name, a in weights.items()})


class Site:
    """One hospital's trainer. `task` supplies the model, the loss and the evaluation statistics."""

    def __init__(self, data: SiteData, task, job_hash: str = ""):
        self.data = data
        self.site_id = data.site_id
        self.task = task
        self.job_hash = job_hash
        self.model = task.build_model()

    def handle(self, instruction: Instruction) -> Reply:
        if instruction.job_hash != self.job_hash:
            raise SiteError(
                f"site {self.site_id}: instruction for job {instruction.job_hash[:12]!r} refused, "
                f"this site approved job {self.job_hash[:12]!r}"
            )
        blob = instruction.payload.get(DataKind.WEIGHTS)
        if blob is None:
            raise SiteError(f"site {self.site_id}: instruction carries no weights")
        load_weights(self.model, decode(blob), self.site_id)
        if instruction.kind == InstructionKind.FIT:
            return self._fit(instruction)
        return self._evaluate(instruction)

    def _fit(self, instruction: Instruction) -> Reply:
        loss = train_epochs(
            self.task, self.model, self.data.train, instruction.fit, instruction.seed, instruction.round
        )
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload={DataKind.WEIGHTS: encode(model_weights(self.model))},
            num_examples=len(self.data.train),
            metrics={"train_loss": loss},
        )

    def _evaluate(self, instruction: Instruction) -> Reply:
        split: Split = self.data.test
        stats = self.task.evaluate(self.model, split.inputs, split.targets)
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload={DataKind.METRICS: encode(stats)},
            num_examples=len(split),
            metrics=self.task.metrics(stats),
        )


def train_epochs(task, model: nn.Module, split: Split, fit: FitConfig, seed: int, round: int = 0) -> float:
    """Local SGD for `fit.epochs` epochs over shuffled minibatches; returns the mean loss.

    With fit.prox_mu > 0 the FedProx term mu/2 * ||w - w_global||^2 is added (Li et al. 2020).
    """
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(split.inputs), torch.from_numpy(split.targets)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=fit.lr_at(round), momentum=fit.momentum, weight_decay=fit.weight_decay
    )
    anchor = [p.detach().clone() for p in model.parameters()] if fit.prox_mu > 0 else None
    model.train()
    total, batches = 0.0, 0
    for _ in range(fit.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), fit.batch_size):
            index = order[start : start + fit.batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a single example
                continue
            loss = task.loss(model, inputs[index], targets[index])
            if anchor is not None:
                loss = loss + 0.5 * fit.prox_mu * sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
    if batches == 0:
        raise SiteError(f"site has too few training examples ({len(inputs)}) for one batch")
    return total / batches
