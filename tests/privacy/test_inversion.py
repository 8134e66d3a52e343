from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedrad.data.phantom import ScannerProfile, generate_scans
from fedrad.privacy.inversion import InversionSettings, batch_gradient, demonstrate, dp_gradient, opacus_compatible
from fedrad.tasks import ClassificationTask


class SmoothCNN(nn.Module):
    """Sigmoid and average pooling (as DLG's and Geiping et al.'s small test networks): no max to hide behind."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2))  # fmt: skip
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return self.head(self.features(x).mean(dim=(2, 3)))


def _scans(n: int = 1):
    images, labels, _ = generate_scans(n, 0.5, ScannerProfile(), np.random.default_rng(5), size=16)
    return images, labels


def test_without_dp_the_update_gives_the_scan_back_and_with_dp_it_does_not():
    torch.manual_seed(0)
    images, labels = _scans()

    demo = demonstrate(SmoothCNN(), images, labels, max_grad_norm=1.0, noise_multiplier=1.0,
                       settings=InversionSettings(iterations=200))  # fmt: skip

    psnr = {name: m["psnr"] for name, m in demo.metrics.items()}
    assert psnr["no_dp"] > psnr["dp"] + 1.0, psnr
    assert psnr["no_dp"] > psnr["random"] + 1.0, psnr
    assert demo.reconstructions["no_dp"].shape == images.shape


def test_the_dp_gradient_is_the_mean_gradient_when_nothing_is_clipped_and_no_noise_is_added():
    torch.manual_seed(0)
    model = opacus_compatible(ClassificationTask(channels=(4, 8)).build_model()).eval()
    images, labels = _scans(3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    plain = torch.cat([g.flatten() for g in batch_gradient(model, x, y)])
    unclipped = torch.cat([g.flatten() for g in dp_gradient(model, x, y, 1e6, 0.0, seed=0)])
    clipped = torch.cat([g.flatten() for g in dp_gradient(model, x, y, 1e-3, 0.0, seed=0)])
    noisy = torch.cat([g.flatten() for g in dp_gradient(model, x, y, 1e-3, 1.0, seed=0)])

    assert torch.allclose(unclipped, plain, atol=1e-5, rtol=1e-4)
    assert float(clipped.norm()) <= 1e-3 + 1e-7  # a mean of vectors of norm <= C has norm <= C
    # Noise of std sigma * C / B per coordinate swamps the clipped signal.
    assert float((noisy - clipped).std()) == pytest.approx(1e-3 / 3, rel=0.05)
