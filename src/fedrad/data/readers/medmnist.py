"""MedMNIST reader: one `.npz` in the public layout -> SiteData, using the file's own split.

Keys train_images / val_images / test_images hold uint8 images (N, H, W) grey, (N, H, W, 3) colour
or (N, D, H, W) for the 3D sets; train_labels / val_labels / test_labels hold (N, 1) class indices,
or (N, L) for multi-label sets (ChestMNIST), where `label_index` picks the one label to learn.
Nothing is ever downloaded: the file must already be on site.
"""

from __future__ import annotations

import zipfile

import numpy as np

from fedrad.data.card import CardRecord
from fedrad.data.readers.common import SPLITS, Sample, SiteRead, assemble_site, resize
from fedrad.data.readers.config import MedMnistSource


def _channel_first(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 (N, H, W) / (N, H, W, 3) / (N, D, H, W) -> float32 (N, C, ...) in [0, 1]."""
    if images.ndim == 3:
        out = images[:, None]
    elif images.ndim == 4 and images.shape[-1] == 3:
        out = np.moveaxis(images, -1, 1)
    elif images.ndim == 4:
        out = images[:, None]  # a 3D set: (N, 1, D, H, W)
    else:
        raise ValueError(f"{where}: images must be (N, H, W), (N, H, W, 3) or (N, D, H, W), got {images.shape}")
    return out.astype(np.float32) / 255.0


def _labels(labels: np.ndarray, where: str, label_index: int | None) -> np.ndarray:
    labels = labels.reshape(len(labels), -1)
    if label_index is not None:
        if label_index >= labels.shape[1]:
            raise ValueError(f"{where}: label_index {label_index} but the file has {labels.shape[1]} label(s)")
        return labels[:, label_index].astype(np.int64)
    if labels.shape[1] != 1:
        raise ValueError(f"{where}: {labels.shape[1]} labels per image (multi-label); set label_index")
    return labels[:, 0].astype(np.int64)


def load_npz(cfg: MedMnistSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images float32 (N, C, ...), labels int64 (N,)), checked key by key."""
    try:
        npz = np.load(cfg.path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{cfg.path}: not a readable .npz file: {exc}") from exc
    out = {}
    with npz:
        for split in SPLITS:
            pair = []
            for kind in ("images", "labels"):
                key = f"{split}_{kind}"
                if key not in npz.files:
                    raise ValueError(f"{cfg.path}: missing key '{key}' (keys are {sorted(npz.files)})")
                try:
                    pair.append(npz[key])
                except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                    raise ValueError(f"{cfg.path}: key '{key}' is unreadable: {exc}") from exc
            images, labels = pair
            if len(images) != len(labels):
                raise ValueError(f"{cfg.path}: {split}_images has {len(images)} rows, {split}_labels {len(labels)}")
            out[split] = (_channel_first(images, f"{cfg.path} {split}_images"),
                          _labels(labels, f"{cfg.path} {split}_labels", cfg.label_index))  # fmt: skip
    return out


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """Resize every image in one call, with (N * C) as MONAI's channel axis."""
    n, c, *spatial = images.shape
    out = resize(images.reshape(n * c, *spatial), (size,) * len(spatial))
    return out.reshape(n, c, *out.shape[1:])


def read_medmnist(cfg: MedMnistSource, site_id: str) -> SiteRead:
    """Read a MedMNIST .npz; a file that does not follow the layout raises naming the file and key."""
    samples: list[Sample] = []
    for split, (images, labels) in load_npz(cfg).items():
        if cfg.size is not None and len(images):
            images = _resize_all(images, cfg.size)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            origin = f"{cfg.path} {split}[{i}]"
            record = CardRecord(origin, label=int(label))  # no patient identity: one sample, one unit
            samples.append(Sample(image, int(label), origin, origin, record, split))
    return assemble_site(site_id, samples, [], cfg, patient_unit="sample")
