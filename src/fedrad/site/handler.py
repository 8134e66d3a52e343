"""A hospital: its data (which never leaves) and the local training / evaluation it performs.

A Site answers Instructions with Replies and nothing else crosses its boundary: weights come in
and go out as safetensors bytes, evaluation goes out as aggregate statistics.

With local DP (the task's `privacy`, `fedrad.privacy.local`) a fit is DP-SGD: the site first
composes the privacy it has spent (its state) with the fit it is asked for and declines with
FailureKind.BUDGET if that would pass its budget; otherwise it trains, keeps the accountant's new
history in its state (saved before the reply leaves) and reports `epsilon_spent` and
`epsilon_round` in the reply's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedrad.codec import decode, encode
from fedrad.data.base import SiteData, Split
from fedrad.privacy.summary import EPSILON_SPENT
from fedrad.secagg.crypto import SecAggError
from fedrad.secagg.identity import Identity
from fedrad.secagg.participant import CLIPPED, Participant, SecAggSettings
from fedrad.site.state import FitState, SiteState, SiteStateError, SiteStateFile
from fedrad.site.training import ScaffoldState, SiteError, private_epochs, train_epochs
from fedrad.types import DataKind, FailureKind, Instruction, InstructionKind, Reply, Weights

log = logging.getLogger(__name__)


class MissingState(SiteError):
    """The site was asked to use its own state (an ensemble member, its BatchNorm) and has none.

    It never trained here, or its state file is gone. Like every SiteError it is a REFUSED
    failure; the strategy then sends this site its starting point again.
    """


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

    def __init__(self, data: SiteData, task, job_hash: str = "", state_file: SiteStateFile | None = None,
                 secagg: SecAggSettings | None = None, identity: Identity | None = None):  # fmt: skip
        self.data = data
        self.site_id = data.site_id
        self.task = task
        self.job_hash = job_hash
        self.model = task.build_model()
        self.state_file = state_file  # None: the state lives in memory only (the simulator)
        self.state: SiteState = (state_file.load() if state_file is not None else None) or SiteState()
        self.privacy = task.privacy  # fedrad.privacy.local.LocalPrivacy, or None: no local DP
        # the job's secure aggregation (fedrad.secagg), or None: a SECAGG instruction is refused
        # (deployed: `identity`, the kit's certificate, signs its keys and checks the others')
        self.secagg = Participant(self.site_id, secagg, identity) if secagg is not None else None
        if self.privacy is not None and self.state.last.privacy_history is None:
            raise SiteStateError(f"{state_file.path}: site {self.site_id}'s state was written before fedrad accounted "
                                 "local DP (state version 1): the budget its fits spent is unknown; move it away "
                                 "to start this site afresh")  # fmt: skip

    @property
    def local(self) -> Weights | None:
        """The model after this site's last fit (FedBN's BatchNorm, an ensemble member), or None."""
        return self.state.last.local

    @property
    def epsilon_spent(self) -> float:
        """The epsilon this site has spent in this job so far (local DP; 0 without)."""
        return self.state.last.epsilon_spent

    @property
    def control(self) -> Weights | None:
        """SCAFFOLD's c_i after this site's last fit, or None."""
        return self.state.last.control

    def handle(self, instruction: Instruction) -> Reply:
        if instruction.job_hash != self.job_hash:
            raise SiteError(
                f"site {self.site_id}: instruction for job {instruction.job_hash[:12]!r} refused, "
                f"this site approved job {self.job_hash[:12]!r}"
            )
        if instruction.kind == InstructionKind.SECAGG:
            return self._secagg_phase(instruction)
        if instruction.kind == InstructionKind.PREDICT:
            return self._predict(instruction)
        if instruction.kind == InstructionKind.EVALUATE and DataKind.OUTPUTS in instruction.payload:
            return self._score_outputs(instruction)
        if instruction.kind == InstructionKind.FIT:
            return self._fit(instruction)
        self._load(instruction, self.state.last.local)
        return self._evaluate(instruction)

    def _load(self, instruction: Instruction, own: Weights | None) -> Weights:
        """Load the instruction's weights, with this site's `own` for the entries it keeps; return what was sent."""
        blob = instruction.payload.get(DataKind.WEIGHTS)
        if blob is None:
            raise SiteError(f"site {self.site_id}: instruction carries no weights")
        sent = decode(blob)
        load_weights(self.model, self._complete(sent, instruction.keep_local, own), self.site_id)
        return sent

    def _complete(self, sent: Weights, keep_local: frozenset[str], own: Weights | None) -> Weights:
        """The model to use: the sent entries, with this site's own values for those in `keep_local`.

        A site with state of its own (`own`, the model after its last fit) uses its values for the
        entries it keeps (FedBN's BatchNorm, an ensemble member); a site with none (never trained
        here, or restarted without its state) starts from the sent values, so the server sends a
        whole model as the starting point, and an entry neither sent nor owned is MissingState.
        """
        if own is None:
            missing = sorted(n for n in keep_local - set(sent) if n in self.model.state_dict())
            if missing:
                raise MissingState(
                    f"site {self.site_id}: no state of its own for the {len(missing)} entries it keeps "
                    f"(e.g. {missing[0]!r}): it never trained here, or its state is gone; it needs the starting point"
                )
            return sent
        return {**sent, **{name: own[name] for name in keep_local if name in own}}

    def _fit(self, instruction: Instruction) -> Reply:
        if instruction.round < self.state.last.round:
            log.warning("site %s: asked to fit round %d after its fit of round %d: a new run of this job, "
                        "starting afresh", self.site_id, instruction.round, self.state.last.round)
        start = self.state.start(instruction.round)  # for a repeated round, what its first try started from
        sent = self._load(instruction, start.local)
        control = instruction.payload.get(DataKind.CONTROL)
        scaffold = ScaffoldState(decode(control), start.control) if control is not None else None
        history, privacy_metrics = (), {}
        if self.privacy is None:
            loss = train_epochs(
                self.task, self.model, self.data.train, instruction.fit, instruction.seed, instruction.round,
                val=self.data.val, scaffold=scaffold,
            )
        else:
            loss, history, privacy_metrics = self._private_fit(instruction, start, scaffold)
        local = {k: v.copy() for k, v in model_weights(self.model).items()}
        c_i, delta = scaffold.updated() if scaffold is not None else (start.control, None)
        spent = privacy_metrics.get(EPSILON_SPENT, 0.0)
        self.state = self.state.after(instruction.round, FitState(instruction.round, local, c_i, history, spent))
        if self.state_file is not None:  # on disk before the reply leaves: a restart continues from here
            self.state_file.save(self.state)
        # The entries the site keeps never leave it; the rest of what was sent goes back (masked, with
        # secure aggregation).
        masked = instruction.payload.get(DataKind.SECAGG)
        if masked is not None:
            upload, clipped = self._masked(instruction, masked, sent, local)
            privacy_metrics = privacy_metrics | {CLIPPED: clipped}
        else:
            upload = {n: local[n] for n in sent if n not in instruction.keep_local}
        payload = {DataKind.WEIGHTS: encode(upload)}
        if delta is not None:
            payload[DataKind.CONTROL] = encode(delta)
        return Reply(
            round=instruction.round,
            site_id=self.site_id,
            kind=instruction.kind,
            payload=payload,
            num_examples=len(self.data.train),
            metrics={"train_loss": loss.loss, "epochs": float(loss.epochs)}
            | ({} if np.isnan(loss.val_loss) else {"val_loss": loss.val_loss}) | privacy_metrics,
        )

    def _secagg_phase(self, instruction: Instruction) -> Reply:
        """A secure-aggregation phase (advertise, share, unmask): fedrad.secagg.participant answers it."""
        if self.secagg is None:
            raise SiteError(f"site {self.site_id}: a secure-aggregation instruction, but this site's job has none")
        blob = instruction.payload.get(DataKind.SECAGG)
        if blob is None:
            raise SiteError(f"site {self.site_id}: a secure-aggregation instruction without its payload")
        try:
            answer = self.secagg.respond(instruction.round, blob, len(self.data.train))
        except SecAggError as exc:
            raise SiteError(str(exc)) from None
        return Reply(instruction.round, self.site_id, instruction.kind, payload={DataKind.SECAGG: answer})

    def _masked(self, instruction: Instruction, blob: bytes, sent: Weights, local: Weights):
        if self.secagg is None:
            raise SiteError(f"site {self.site_id}: a masked fit, but this site's job has no secure aggregation")
        bad = sorted(n for n, a in local.items() if a.dtype.kind == "f" and not np.isfinite(a).all())
        if bad:  # the server cannot see masked values: the site itself must not send a diverged model
            raise SiteError(f"site {self.site_id}: its trained model is not finite ({bad[0]!r}); a masked upload "
                            "would hide that from the server, so none is sent", FailureKind.ERROR)
        try:
            return self.secagg.mask(instruction.round, blob, sent, local, instruction.keep_local, len(self.data.train))
        except SecAggError as exc:
            raise SiteError(str(exc)) from None

    def _private_fit(self, instruction: Instruction, start: FitState, scaffold: ScaffoldState | None):
        """DP-SGD for this fit, after checking the budget (BudgetExceeded); the outcome, history and metrics."""
        privacy, fit = self.privacy, instruction.fit
        if fit.patience is not None:
            raise SiteError(f"site {self.site_id}: early stopping (patience) is not planned for by local DP")
        spent = start.privacy_history or ()
        entry = privacy.planned_fit(self.site_id, len(self.data.train), fit)
        privacy.check(self.site_id, instruction.round, spent, entry)  # raises BudgetExceeded
        loss, history = private_epochs(self.task, self.model, self.data.train, fit, instruction.seed,
                                       instruction.round, privacy, entry[0], spent, scaffold)  # fmt: skip
        return loss, history, privacy.metrics(spent, history, entry[0])

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
            raise MissingState(f"site {self.site_id}: no model of its own to predict with (it never trained here, "
                               "or its state is gone)")
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
