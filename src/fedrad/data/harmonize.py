"""Harmonisation: one preprocessing, declared once in the job, applied identically at every site.

The job's `data.harmonize` block lists the steps, in this fixed order:
1) orientation (MONAI `Orientation`, axis codes such as "RA" for 2D), 2) resampling to a pixel
spacing in mm (`Spacing`), 3) intensity normalisation (z-score per image, percentile scaling, or a
CT window in Hounsfield units), 4) resize or centre crop/pad to a size (`Resize` / `ResizeWithPadOrCrop`).
Masks follow every spatial step with nearest-neighbour interpolation, so labels stay labels.

Each site computes a fingerprint: the sha256 of the steps it built and the MONAI version that ran
them. A site whose fingerprint is not the job's is refused (`HarmonizationError` naming the site):
two sites that preprocess differently would train one model on two different inputs.

The readers' arrays carry no affine, so steps 1-2 see a grid of `input_spacing_mm` pixels (1 mm by
default) in the arrays' own axis order (rows = anterior-posterior, columns = right-left).

Example:
    >>> h = Harmonizer(HarmonizeConfig(intensity=ZScore(), size=(32, 32)))
    >>> len(h.fingerprint)
    64
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedrad.data.base import SiteData, Split

FINGERPRINT_KEY = "preprocessing"  # the card entry each site fills with its fingerprint
_LPS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class HarmonizationError(ValueError):
    """A site whose preprocessing is not the job's; the message names the site."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZScore(_Strict):
    kind: Literal["zscore"] = "zscore"
    nonzero: bool = False  # statistics over non-zero pixels only (background excluded)


class Percentile(_Strict):
    kind: Literal["percentile"] = "percentile"
    lower: float = Field(1.0, ge=0, lt=100)  # this percentile -> 0, `upper` -> 1
    upper: float = Field(99.0, gt=0, le=100)
    clip: bool = True


class CTWindow(_Strict):
    kind: Literal["ct_window"] = "ct_window"
    center: float = 40.0  # soft tissue
    width: float = Field(400.0, gt=0)


Intensity = Annotated[ZScore | Percentile | CTWindow, Field(discriminator="kind")]


class HarmonizeConfig(_Strict):
    """The job's preprocessing; every field is optional and a missing one is a step not taken."""

    orientation: str | None = Field(None, pattern=r"^[LRPAIS]{2,3}$")  # e.g. "RA"
    spacing: tuple[Annotated[float, Field(gt=0)], ...] | None = Field(None, min_length=2, max_length=3)
    intensity: Intensity | None = None
    size: tuple[Annotated[int, Field(ge=4)], ...] | None = Field(None, min_length=2, max_length=3)
    spatial: Literal["resize", "crop"] = "resize"  # how `size` is reached: resample, or centre crop/pad


class Harmonizer:
    """Builds the MONAI transforms of a HarmonizeConfig and applies them to whole splits.

    A split's images are stacked along MONAI's channel axis, so each spatial step is one call per
    split; intensity steps run channel-wise, i.e. per image (and per image channel).
    """

    def __init__(self, config: HarmonizeConfig, input_spacing_mm: float = 1.0):
        self.config = config
        self.input_spacing_mm = input_spacing_mm
        self.steps = self._steps(config)

    @staticmethod
    def _steps(c: HarmonizeConfig) -> list[tuple[str, dict[str, Any]]]:
        steps: list[tuple[str, dict[str, Any]]] = []
        if c.orientation:
            steps.append(("Orientation", {"axcodes": c.orientation}))
        if c.spacing:
            steps.append(("Spacing", {"pixdim": list(c.spacing)}))
        if c.intensity is not None:
            steps.append(("Intensity", c.intensity.model_dump()))
        if c.size:
            steps.append(("Resize" if c.spatial == "resize" else "ResizeWithPadOrCrop", {"size": list(c.size)}))
        return steps

    @property
    def fingerprint(self) -> str:
        """sha256 of the steps and of the MONAI version that runs them."""
        import monai

        canonical = json.dumps({"steps": self.steps, "monai": monai.__version__}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _spatial(self, name: str, params: dict[str, Any], *, mask: bool) -> Any:
        from monai import transforms as T

        if name == "Orientation":
            return T.Orientation(axcodes=params["axcodes"], labels=_LPS_LABELS)
        if name == "Spacing":
            return T.Spacing(pixdim=params["pixdim"], mode="nearest" if mask else "bilinear")
        if name == "Resize":
            return T.Resize(spatial_size=params["size"], mode="nearest" if mask else "area")
        return T.ResizeWithPadOrCrop(spatial_size=params["size"])

    @staticmethod
    def _intensity(params: dict[str, Any]) -> Any:
        from monai import transforms as T

        if params["kind"] == "zscore":
            return T.NormalizeIntensity(nonzero=params["nonzero"], channel_wise=True)
        if params["kind"] == "percentile":
            return T.ScaleIntensityRangePercentiles(
                params["lower"], params["upper"], 0.0, 1.0, clip=params["clip"], channel_wise=True
            )
        low = params["center"] - params["width"] / 2.0
        return T.ScaleIntensityRange(low, low + params["width"], 0.0, 1.0, clip=True)

    def _run(self, array: np.ndarray, *, mask: bool) -> np.ndarray:
        """(N, C, *spatial) -> (N, C, *new spatial), every step applied to every image alike."""
        import torch
        from monai.data import MetaTensor

        n, c, spatial = array.shape[0], array.shape[1], array.shape[2:]
        dims = len(spatial)
        affine = torch.eye(4, dtype=torch.float64)
        affine[:dims, :dims] *= self.input_spacing_mm
        x = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(n * c, *spatial),
                       affine=affine)  # fmt: skip
        for name, params in self.steps:
            if name == "Intensity":
                x = x if mask else self._intensity(params)(x)
                continue
            x = self._spatial(name, params, mask=mask)(x)
        out = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
        return out.reshape(n, c, *out.shape[1:])

    def split(self, split: Split) -> Split:
        """A split with its images (and its masks, where targets are masks) harmonised."""
        if split.inputs.ndim < 4:
            raise HarmonizationError(f"harmonisation needs images (N, C, H, W), got inputs {split.inputs.shape}")
        if len(split) == 0:
            return split
        masks = split.targets.ndim == split.inputs.ndim
        targets = self._run(split.targets, mask=True) if masks else split.targets
        return Split(self._run(split.inputs, mask=False), targets)

    def site(self, data: SiteData) -> SiteData:
        """The site's data harmonised, its card carrying the fingerprint of what was applied."""
        try:
            train, val, test = (self.split(s) for s in (data.train, data.val, data.test))
        except HarmonizationError as exc:
            raise HarmonizationError(f"site {data.site_id}: {exc}") from None
        shape = "x".join(str(d) for d in train.inputs.shape[1:])
        card = {**data.card, FINGERPRINT_KEY: self.fingerprint, "input_shape": shape}
        return replace(data, train=train, val=val, test=test, card=card)


def verify_site(data: SiteData, expected: str | None) -> None:
    """Refuse a site whose preprocessing fingerprint differs from the job's (None: no harmonisation)."""
    applied = data.card.get(FINGERPRINT_KEY)
    if applied == expected:
        return
    if expected is None:
        raise HarmonizationError(
            f"site {data.site_id}: applied preprocessing {str(applied)[:12]} but the job declares none"
        )
    if applied is None:
        raise HarmonizationError(f"site {data.site_id}: applied no harmonisation; the job's is {expected[:12]}")
    raise HarmonizationError(
        f"site {data.site_id}: preprocessing fingerprint {str(applied)[:12]} differs from the job's {expected[:12]}; "
        "the site must apply the job's data.harmonize steps with the same MONAI version"
    )
