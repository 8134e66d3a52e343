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
from fedrad.site.training import ScaffoldState, SiteError, train_epochs
from fedrad.types import DataKind, Instruction, InstructionKind, Reply, Weights


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
        self.local: Weights | None = None  # the model after this site's last fit (kept across rounds)
        self.control: Weights | None = None  # SCAFFOLD's c_i, kept across rounds

    def handle(self, instruction: Instruction) -> Reply:
        if instruction.job_hash != self.job_hash:
            raise SiteError(
                f"site {self.site_id}: instruction for job {instruction.job_hash[:12]!r} refused, "
                f"this site approved job {self.job_hash[:12]!r}"
            )
        if instruction.kind == InstructionKind.PREDICT:
            return self._predict(instruction)
        if instruction.kind == InstructionKind.EVALUATE and DataKind.OUTPUTS in instruction.payload:
            return self._score_outputs(instruction)
        if instruction.kind == InstructionKind.FIT:
            return self._fit(instruction)
        self._load(instruction)
        return self._evaluate(instruction)

    def _load(self, instruction: Instruction) -> Weights:
        """Load the instruction's weights into the model; return what was sent."""
        blob = instruction.payload.get(DataKind.WEIGHTS)
        if blob is None:
            raise SiteError(f"site {self.site_id}: instruction carries no weights")
        sent = decode(blob)
        load_weights(self.model, self._complete(sent), self.site_id)
        return sent

    def _complete(self, sent: Weights) -> Weights:
        """The sent entries plus this site's own for the rest (FedBN's BatchNorm, an ensemble member).

        A strategy that keeps part of the model local sends only the shared part; the site fills
        the rest from the model of its last fit. Before any fit, the full model must be sent.
        """
        if set(sent) == set(self.model.state_dict()) or self.local is None:
            return sent
        return {**self.local, **sent}

    def _fit(self, instruction: Instruction) -> Reply:
        sent = self._load(instruction)
        control = instruction.payload.get(DataKind.CONTROL)
        scaffold = ScaffoldState(decode(control), self.control) if control is not None else None
        loss = train_epochs(
            self.task, self.model, self.data.train, instruction.fit, instruction.seed, instruction.round,
            val=self.data.val, scaffold=scaffold,
        )
        self.local = {k: v.copy() for k, v in model_weights(self.model).items()}
        # Only what was sent goes back: the entries a strategy keeps local never leave the site.
        payload = {DataKind.WEIGHTS: encode({name: self.local[name] for name in sent})}
        if scaffold is not None:
            self.control, delta = scaffold.updated()
            payload[DataKind.CONTROL] = encode(delta)
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload=payload,
            num_examples=len(self.data.train),
            metrics={"train_loss": loss.loss, "epochs": float(loss.epochs)}
            | ({} if np.isnan(loss.val_loss) else {"val_loss": loss.val_loss}),
        )

    def _evaluate(self, instruction: Instruction) -> Reply:
        split: Split = self.data.test
        return self._stats_reply(instruction, self.task.evaluate(self.model, split.inputs, split.targets))

    def _predict(self, instruction: Instruction) -> Reply:
        """Ensemble inference with this site's own model (from its last fit).

        With RAW_DATA (query images from another site) the reply is their probabilities (OUTPUTS).
        Without, this site is the querying one: it hands over its test images as the query
        (RAW_DATA) and its own member's probabilities on them (OUTPUTS).
        """
        if self.local is None:
            raise SiteError(f"site {self.site_id}: no local model to predict with (it never trained)")
        load_weights(self.model, self.local, self.site_id)
        query = instruction.payload.get(DataKind.RAW_DATA)
        inputs = decode(query)["inputs"] if query is not None else self.data.test.inputs
        payload = {DataKind.OUTPUTS: encode({"probs": self.task.predict(self.model, inputs)})}
        if query is None:
            payload[DataKind.RAW_DATA] = encode({"inputs": inputs})
        return Reply(instruction.round, self.site_id, instruction.kind, payload, num_examples=len(inputs))

    def _score_outputs(self, instruction: Instruction) -> Reply:
        """Evaluate given probabilities for this site's test set (an ensemble's combined outputs)."""
        probs = decode(instruction.payload[DataKind.OUTPUTS])["probs"]
        if len(probs) != len(self.data.test):
            raise SiteError(f"site {self.site_id}: {len(probs)} outputs for {len(self.data.test)} test images")
        return self._stats_reply(instruction, self.task.stats(probs, self.data.test.targets))

    def _stats_reply(self, instruction: Instruction, stats: dict) -> Reply:
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload={DataKind.METRICS: encode(stats)},
            num_examples=len(self.data.test),
            metrics=self.task.metrics(stats),
        )
