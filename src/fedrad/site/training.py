"""A site's local training: SGD epochs with the FedProx term, SCAFFOLD's correction and early stopping.

One function, `train_epochs`, serves every strategy; what differs is typed in the FitConfig
(prox_mu, patience) or carried in the instruction (SCAFFOLD's server control variate). With local
DP, `private_epochs` is its DP-SGD twin (Opacus; the rules are in `fedrad.privacy.local`).

Frozen parameters (the job's `task.freeze`: built with `requires_grad=False`) are not trained by
either: the optimizer gets the trainable parameters only (no step, no momentum, no weight decay on
the others), FedProx's term and SCAFFOLD's correction apply to the trainable ones, and a BatchNorm
whose parameters are all frozen stays in eval mode while the rest trains (`train_mode`), so its
running statistics stay the ones it was given (a frozen feature extractor is a fixed function).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedrad.data.base import Split
from fedrad.types import FailureError, FailureKind, FitConfig, Weights

if TYPE_CHECKING:
    from fedrad.privacy.local import History, LocalPrivacy


class SiteError(FailureError, ValueError):
    """An instruction this site refuses (wrong job, missing weights, names that do not match).

    Its `kind` travels with the failed reply: REFUSED by default, ERROR for work the site accepted
    but could not do (too few examples for one batch).
    """

    def __init__(self, message: str, kind: FailureKind = FailureKind.REFUSED):
        super().__init__(message)
        self.kind = kind


@dataclass
class TrainOutcome:
    loss: float  # mean training loss over the epochs run
    epochs: int  # epochs run (fewer than asked when early stopping fired)
    val_loss: float  # best validation loss (nan without a validation split)


@dataclass
class ScaffoldState:
    """SCAFFOLD's control variates at one site during one fit (Karimireddy et al. 2020, Alg. 1).

    Each local step uses the gradient g + c - c_i; afterwards (option II)
    c_i+ = c_i - c + (x - y) / (K * lr), with x the model received, y the model after K steps.
    """

    server: Weights  # c, by parameter name
    site: Weights | None  # c_i from this site's previous fit (None: zeros)
    start: Weights | None = None
    end: Weights | None = None
    steps: int = 0
    lr: float = 1.0

    def correction(self, name: str, like: torch.Tensor) -> torch.Tensor:
        c = torch.from_numpy(np.asarray(self.server[name], dtype=np.float32))
        c_i = torch.zeros_like(like) if self.site is None else torch.from_numpy(self.site[name])
        return (c - c_i).reshape(like.shape)

    def updated(self) -> tuple[Weights, Weights]:
        """(c_i+, c_i+ - c_i): the new site variate, kept here, and the delta sent to the server."""
        new, delta = {}, {}
        for name, c in self.server.items():
            old = np.zeros_like(c) if self.site is None else self.site[name]
            step = (self.start[name] - self.end[name]) / (max(self.steps, 1) * self.lr)
            new[name] = (old - c + step).astype(np.float32)
            delta[name] = (new[name] - old).astype(np.float32)
        return new, delta


def params_of(model: nn.Module) -> Weights:
    """The model's trainable parameters as numpy copies (SCAFFOLD's x and y)."""
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters local training updates: those with `requires_grad` (task.freeze leaves the others)."""
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, except each BatchNorm whose parameters are all frozen, which stays in eval mode:
    it normalises with, and keeps, the running statistics it was given."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parameters = list(module.parameters())
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()
    return model


@torch.no_grad()
def validation_loss(task, model: nn.Module, split: Split) -> float:
    model.eval()
    inputs, targets = torch.from_numpy(split.inputs), torch.from_numpy(split.targets)
    losses = [float(task.loss(model, inputs[i : i + 256], targets[i : i + 256])) * len(inputs[i : i + 256])
              for i in range(0, len(inputs), 256)]
    return sum(losses) / len(inputs)


def train_epochs(
    task, model: nn.Module, split: Split, fit: FitConfig, seed: int, round: int = 0,
    val: Split | None = None, scaffold: ScaffoldState | None = None,
) -> TrainOutcome:
    """Local SGD for up to `fit.epochs` epochs over shuffled minibatches.

    1) FedProx: with fit.prox_mu > 0 the term mu/2 * ||w - w_global||^2 is added (Li et al. 2020).
    2) SCAFFOLD: each gradient is corrected by c - c_i before the step.
    3) Early stopping: with fit.patience and a validation split, stop once the validation loss has
       not improved for `patience` epochs and restore the best epoch's weights (Chang et al. 2018).
    """
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(split.inputs), torch.from_numpy(split.targets)
    lr = fit.lr_at(round)
    params = trainable(model)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=fit.momentum, weight_decay=fit.weight_decay)
    anchor = [p.detach().clone() for p in params] if fit.prox_mu > 0 else None
    if scaffold is not None:
        scaffold.start, scaffold.lr = params_of(model), lr
    early = fit.patience is not None and val is not None and len(val) > 0
    best, best_state, since_best, epochs_run = float("inf"), None, 0, 0
    total, batches = 0.0, 0
    for _ in range(fit.epochs):
        train_mode(model)
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), fit.batch_size):
            index = order[start : start + fit.batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a single example
                continue
            loss = task.loss(model, inputs[index], targets[index])
            if anchor is not None:
                loss = loss + 0.5 * fit.prox_mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if scaffold is not None:
                for name, p in model.named_parameters():
                    if p.requires_grad:  # a frozen parameter has no gradient, and no step to correct
                        p.grad += scaffold.correction(name, p.grad)
                scaffold.steps += 1
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        epochs_run += 1
        if early:
            current = validation_loss(task, model, val)
            if current < best:
                best, since_best = current, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if since_best >= fit.patience:
                    break
    if batches == 0:
        raise SiteError(f"site has too few training examples ({len(inputs)}) for one batch", FailureKind.ERROR)
    if best_state is not None:
        model.load_state_dict(best_state)
    if scaffold is not None:
        scaffold.end = params_of(model)
    return TrainOutcome(total / batches, epochs_run, best if early else float("nan"))


def _generator(seed: int, stream: int) -> torch.Generator:
    """One of the fit's independent random streams (0: the Poisson batches, 1: the noise)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))


def private_epochs(
    task, model: nn.Module, split: Split, fit: FitConfig, seed: int, round: int, privacy: LocalPrivacy,
    noise: float, history: History, scaffold: ScaffoldState | None = None,
) -> tuple[TrainOutcome, History]:
    """DP-SGD for `fit.epochs` epochs through Opacus; the outcome and the accountant's history after it.

    1) Opacus wraps the model (hooks only: the site's model object stays), the optimizer (clip and
       noise) and the data (Poisson sampling), its accountant starting from this site's `history`.
    2) FedProx: mu * (w - w_global) is added to the noisy gradient, before the step.
    3) SCAFFOLD: c - c_i likewise.
    4) Frozen parameters (task.freeze) get no per-sample gradient, no noise and no step.
    """
    from opacus import PrivacyEngine

    inputs, targets = torch.from_numpy(split.inputs), torch.from_numpy(split.targets)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets),
                                         batch_size=fit.batch_size, generator=_generator(seed, 0))  # fmt: skip
    lr = fit.lr_at(round)
    params = trainable(model)  # Opacus computes per-sample gradients, clips and noises these only
    optimizer = torch.optim.SGD(params, lr=lr, momentum=fit.momentum, weight_decay=fit.weight_decay)
    anchor = [p.detach().clone() for p in params] if fit.prox_mu > 0 else None
    if scaffold is not None:
        scaffold.start, scaffold.lr = params_of(model), lr
    train_mode(model)  # Opacus wraps a model in training mode only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure RNG off (seeded on purpose); full backward hooks on inputs
        engine = PrivacyEngine(accountant=privacy.accountant)
        engine.accountant.history = list(history)
        hooks, dp_optimizer, batches = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=privacy.max_grad_norm, poisson_sampling=True, noise_generator=_generator(seed, 1),
            wrap_model=False,
        )
        try:
            total, counted = _steps(task, model, batches, dp_optimizer, fit, anchor, scaffold)
        finally:
            hooks.cleanup()
    if counted == 0:
        raise SiteError(f"site has too few training examples ({len(inputs)}) for one batch", FailureKind.ERROR)
    if scaffold is not None:
        scaffold.end = params_of(model)
    after = tuple((float(s), float(q), int(n)) for s, q, n in engine.accountant.history)
    return TrainOutcome(total / counted, fit.epochs, float("nan")), after


def _steps(task, model, batches, optimizer, fit: FitConfig, anchor, scaffold) -> tuple[float, int]:
    """Every epoch's steps; the summed loss and the number of non-empty batches it was summed over."""
    total, counted = 0.0, 0
    for _ in range(fit.epochs):
        train_mode(model)
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model, x, y)
            loss.backward()  # an empty Poisson batch still steps: its update is the noise alone
            if not optimizer.pre_step():  # clip, add noise, account
                continue
            with torch.no_grad():
                for i, (name, p) in enumerate((n, p) for n, p in model.named_parameters() if p.requires_grad):
                    if anchor is not None:
                        p.grad += fit.prox_mu * (p - anchor[i])
                    if scaffold is not None:
                        p.grad += scaffold.correction(name, p.grad)
            optimizer.original_optimizer.step()
            if scaffold is not None:
                scaffold.steps += 1
            if len(x):
                total, counted = total + float(loss.detach()), counted + 1
    return total, counted
