"""Harmonisation: one preprocessing, declared once in the job, applied identically at every site.

The job's `data.harmonize` block lists the steps, in this fixed order:
1) orientation (MONAI `Orientation`, axis codes such as "PL" for 2D), 2) resampling to a pixel
spacing in mm (`Spacing`), 3) intensity normalisation (z-score per image, percentile scaling, or a
CT window in Hounsfield units), 4) resize or centre crop/pad to a size (`Resize` / `ResizeWithPadOrCrop`).
Masks follow every spatial step with nearest-neighbour interpolation, so labels stay labels.

Steps 1-2 need to know where each pixel lies. The DICOM, NIfTI and PNG readers therefore apply the
job's steps to each image as they read it, at its native resolution, with its real geometry
(`fedrad.data.geometry`: PixelSpacing and ImageOrientationPatient, the NIfTI affine, a PNG's
declared spacing) carried into a MONAI `MetaTensor`; the fixed size comes last (`Harmonizer.image`).
Arrays that carry no geometry (phantom hospitals, MedMNIST) are harmonised split by split and taken
to be in the display layout with square pixels of `input_spacing_mm` (1 mm by default).

Each site computes a fingerprint: the sha256 of the steps it built and the MONAI version that ran
them. A site whose fingerprint is not the job's is refused (`HarmonizationError` naming the site):
two sites that preprocess differently would train one model on two different inputs.

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
from fedrad.data.geometry import RAS_LABELS, Geometry

FINGERPRINT_KEY = "preprocessing"  # the card entry each site fills with its fingerprint


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

    orientation: str | None = Field(None, pattern=r"^[LRPAIS]{2,3}$")  # e.g. "PL": as radiologists view
    spacing: tuple[Annotated[float, Field(gt=0)], ...] | None = Field(None, min_length=2, max_length=3)
    intensity: Intensity | None = None
    size: tuple[Annotated[int, Field(ge=4)], ...] | None = Field(None, min_length=2, max_length=3)
    spatial: Literal["resize", "crop"] = "resize"  # how `size` is reached: resample, or centre crop/pad


class Harmonizer:
    """Builds the MONAI transforms of a HarmonizeConfig and applies them to images or whole splits.

    `image` runs every step on one image with its own geometry (what the image readers call);
    `split` / `site` stack a split's images along MONAI's channel axis, so each spatial step is one
    call per split. Intensity steps run channel-wise, i.e. per image (and per image channel).
    """

    def __init__(self, config: HarmonizeConfig, input_spacing_mm: float = 1.0):
        self.config = config
        self.input_spacing_mm = input_spacing_mm  # assumed for arrays that carry no geometry
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

    def check_dims(self, dims: int) -> None:
        """Refuse images whose number of spatial dims is not the one the job's steps are written for."""
        for key in ("orientation", "spacing", "size"):
            value = getattr(self.config, key)
            if value is not None and len(value) != dims:
                shown = repr(value) if isinstance(value, str) else list(value)
                raise HarmonizationError(
                    f"data.harmonize.{key} {shown} has {len(value)} axes but the images have {dims} spatial dims"
                )

    def _spatial(self, name: str, params: dict[str, Any], *, mask: bool) -> Any:
        from monai import transforms as T

        if name == "Orientation":
            return T.Orientation(axcodes=params["axcodes"], labels=RAS_LABELS)
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

    def image(self, image: np.ndarray, geometry: Geometry | None = None, *, mask: bool = False) -> np.ndarray:
        """(C, *spatial) -> (C, *new spatial): every step, with the image's geometry in its affine.

        `geometry` None: the display layout with `input_spacing_mm` pixels.
        """
        import torch
        from monai.data import MetaTensor

        dims = image.ndim - 1
        geometry = geometry or Geometry((self.input_spacing_mm,) * dims)
        if geometry.dims != dims:
            raise HarmonizationError(f"a geometry of {geometry.dims} dims for an image of {dims} spatial dims")
        self.check_dims(dims)
        x = MetaTensor(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                       affine=torch.as_tensor(geometry.affine(), dtype=torch.float64))  # fmt: skip
        for name, params in self.steps:
            if name == "Intensity":
                x = x if mask else self._intensity(params)(x)
                continue
            x = self._spatial(name, params, mask=mask)(x)
        return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)

    def _run(self, array: np.ndarray, *, mask: bool) -> np.ndarray:
        """(N, C, *spatial) -> (N, C, *new spatial), with (N * C) as MONAI's channel axis."""
        n, c = array.shape[:2]
        out = self.image(array.reshape(n * c, *array.shape[2:]), mask=mask)
        return out.reshape(n, c, *out.shape[1:])

    def split(self, split: Split) -> Split:
        """A split with its images (and its masks, where targets are masks) harmonised."""
        if split.inputs.ndim < 4:
            raise HarmonizationError(f"harmonisation needs images (N, C, H, W), got inputs {split.inputs.shape}")
        self.check_dims(split.inputs.ndim - 2)
        if len(split) == 0:
            return split
        masks = split.targets.ndim == split.inputs.ndim
        targets = self._run(split.targets, mask=True) if masks else split.targets
        return Split(self._run(split.inputs, mask=False), targets)

    def stamp(self, data: SiteData) -> SiteData:
        """The site's card with the fingerprint of what was applied (and the resulting input shape)."""
        shape = "x".join(str(d) for d in data.train.inputs.shape[1:])
        return replace(data, card={**data.card, FINGERPRINT_KEY: self.fingerprint, "input_shape": shape})

    def site(self, data: SiteData) -> SiteData:
        """A site of arrays without geometry, harmonised split by split and stamped with the fingerprint."""
        try:
            train, val, test = (self.split(s) for s in (data.train, data.val, data.test))
        except HarmonizationError as exc:
            raise HarmonizationError(f"site {data.site_id}: {exc}") from None
        return self.stamp(replace(data, train=train, val=val, test=test))


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
