"""Gradient inversion: what one site's update gives away, without and with DP-SGD.

The attack is Inverting Gradients (Geiping et al. 2020): the server sees a site's update after one
local SGD step on a small batch (FedSGD, the attacker's best case: the update is -lr times the
batch gradient) and knows the labels. It optimises dummy images, with Adam, so that their gradient
points the same way as the observed one (cosine distance) under a total-variation prior:

    min_x  1 - cos(grad L(x, y), g_observed) + tv_weight * TV(x)

With DP-SGD the site sends instead the sum of per-sample gradients, each clipped to `max_grad_norm`,
plus N(0, (noise_multiplier * max_grad_norm)^2) noise, over the batch size (Opacus' recipe; the
per-sample gradients come from Opacus' GradSampleModule). Both runs use the same model with its
BatchNorm replaced by GroupNorm (Opacus' ModuleValidator.fix), so that only the noise differs.

The model standardises every image, so gain and offset are invisible to it and no attack can get
them back: each reconstruction is mapped onto its original by the least-squares affine fit before
PSNR and SSIM (MONAI) are taken, with the original's range as data range. The random start, fitted
the same way, is the baseline that says what "nothing recovered" scores.

Example:
    >>> result = demonstrate(model, images, labels, max_grad_norm=1.0, noise_multiplier=1.1)  # doctest: +SKIP
    >>> result.metrics["no_dp"]["psnr"] > result.metrics["dp"]["psnr"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class InversionSettings:
    iterations: int = 300
    lr: float = 0.1
    tv_weight: float = 0.01  # the prior's strength; Geiping et al. use 1e-4 to 1e-2 by image size
    seed: int = 0


@dataclass
class Demonstration:
    originals: np.ndarray  # (B, 1, S, S)
    reconstructions: dict[str, np.ndarray]  # "no_dp", "dp", "random" (the start), affinely fitted
    metrics: dict[str, dict[str, float]]  # the same keys: {"psnr", "ssim"}


def opacus_compatible(model: nn.Module) -> nn.Module:
    """A copy Opacus can take per-sample gradients of: BatchNorm -> GroupNorm (ModuleValidator.fix), and
    no in-place ReLU (its output is a view of Opacus' hooked tensor, which autograd refuses to modify)."""
    from opacus.validators import ModuleValidator

    model = ModuleValidator.fix(copy.deepcopy(model))
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def batch_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The mean cross-entropy gradient of one batch: what a site's one-step update reveals."""
    loss = F.cross_entropy(model(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, _params(model))]


def dp_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, max_grad_norm: float, noise_multiplier: float,
    seed: int,
) -> list[torch.Tensor]:
    """DP-SGD's gradient of one batch: per-sample gradients (Opacus) clipped to max_grad_norm, summed,
    Gaussian noise of std noise_multiplier * max_grad_norm added, divided by the batch size."""
    from opacus import GradSampleModule

    module = GradSampleModule(copy.deepcopy(model).train(), loss_reduction="sum")  # hooks fire in train mode
    with warnings.catch_warnings():  # "no inputs require gradients": true, and what is wanted here
        warnings.simplefilter("ignore", UserWarning)
        F.cross_entropy(module(images), labels, reduction="sum").backward()
    per_sample = [p.grad_sample.flatten(1) for p in _params(module)]  # type: ignore[union-attr]
    norms = torch.cat(per_sample, dim=1).norm(dim=1)  # 1) each sample's norm over all parameters
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for p, g in zip(_params(module), per_sample, strict=True):
        clipped = (factor[:, None] * g).sum(dim=0)  # 2) clip, then sum over the batch
        noise = torch.normal(0.0, noise_multiplier * max_grad_norm, clipped.shape, generator=generator)
        out.append(((clipped + noise) / len(images)).reshape(p.shape).detach())  # 3) noise, mean
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(
    model: nn.Module, observed: list[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...],
    settings: InversionSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, random start): dummy images whose gradient matches `observed` in direction."""
    generator = torch.Generator().manual_seed(settings.seed)
    start = torch.randn(shape, generator=generator)
    dummy = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([dummy], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(settings.iterations * f) for f in (0.375, 0.625, 0.875)], gamma=0.1
    )  # Geiping et al.'s steps at 3/8, 5/8 and 7/8 of the run
    target = torch.cat([g.flatten() for g in observed])
    for _ in range(settings.iterations):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(dummy), labels)
        grads = torch.autograd.grad(loss, _params(model), create_graph=True)
        cosine = F.cosine_similarity(torch.cat([g.flatten() for g in grads]), target, dim=0)
        objective = 1 - cosine + settings.tv_weight * total_variation(dummy)
        objective.backward()
        optimizer.step()
        schedule.step()
    return dummy.detach(), start


def affine_fit(reconstruction: np.ndarray, original: np.ndarray) -> np.ndarray:
    """a * reconstruction + b closest to the original, per image (the model cannot see a and b)."""
    out = np.empty_like(original)
    for i, (x, y) in enumerate(zip(reconstruction, original, strict=True)):
        design = np.stack([x.ravel(), np.ones(x.size)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y.ravel(), rcond=None)
        out[i] = a * x + b
    return out


def image_quality(reconstruction: np.ndarray, original: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM (MONAI) over the batch, data range = the original's range."""
    from monai.metrics import PSNRMetric, SSIMMetric

    data_range = float(original.max() - original.min())
    x, y = torch.from_numpy(reconstruction).float(), torch.from_numpy(original).float()
    window = min(7, original.shape[-1] // 2 * 2 - 1)
    psnr = PSNRMetric(max_val=data_range)(x, y).mean()
    ssim = SSIMMetric(spatial_dims=2, data_range=data_range, win_size=window)(x, y).mean()
    return {"psnr": float(psnr), "ssim": float(ssim)}


def demonstrate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, max_grad_norm: float, noise_multiplier: float,
    settings: InversionSettings = InversionSettings(),
) -> Demonstration:
    """Invert one batch's update without DP and with DP-SGD; `model` is made Opacus-compatible first."""
    model = opacus_compatible(model).eval()  # GroupNorm: the same in train and eval mode
    x, y = torch.from_numpy(images).float(), torch.from_numpy(labels).long()
    # One thread: a few hundred steps on tensors this small are all synchronisation with more (measured:
    # 50 times slower with 2 threads on 2 busy cores), and the result does not depend on the machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        observed = {
            "no_dp": batch_gradient(model, x, y),
            "dp": dp_gradient(model, x, y, max_grad_norm, noise_multiplier, settings.seed),
        }
        reconstructions, start = {}, None
        for name, gradient in observed.items():
            recovered, start = invert(model, gradient, y, tuple(x.shape), settings)
            reconstructions[name] = affine_fit(recovered.numpy(), images)
    finally:
        torch.set_num_threads(threads)
    reconstructions["random"] = affine_fit(start.numpy(), images)
    metrics = {name: image_quality(r, images) for name, r in reconstructions.items()}
    return Demonstration(images, reconstructions, metrics)


def save_figure(demo: Demonstration, path: Path, caption: str) -> None:
    """Originals beside their reconstructions (no DP, DP), one row per image of the batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("original", demo.originals), *((f"{n.replace('_', ' ')}: PSNR {demo.metrics[n]['psnr']:.1f} dB",
               demo.reconstructions[n]) for n in ("no_dp", "dp"))]  # fmt: skip
    rows = len(demo.originals)
    fig, axes = plt.subplots(rows, len(columns), figsize=(3 * len(columns), 3 * rows), squeeze=False)
    low, high = float(demo.originals.min()), float(demo.originals.max())
    for r in range(rows):
        for c, (title, images) in enumerate(columns):
            axes[r][c].imshow(images[r, 0], cmap="gray", vmin=low, vmax=high)
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(title, fontsize=9)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
