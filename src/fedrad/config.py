"""Job configuration: YAML validated by pydantic. A bad key or value is one line naming file and key.

Example (examples/phantom.yaml):
    name: phantom
    seed: 0
    data: {source: phantom}
    train: {rounds: 15, local_epochs: 1, batch_size: 32, lr: 0.05}
    strategy: {name: fedavg, fraction: 1.0}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedrad.data.harmonize import HarmonizeConfig
from fedrad.types import FitConfig
from fedrad.yamlfile import read_yaml_mapping

METHODS = ("fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "scaffold", "swt", "cwt", "ensemble", "cds", "local")
MethodName = Literal[
    "fedavg", "fedprox", "fedbn", "fedavgm", "fedadam", "scaffold", "swt", "cwt", "ensemble", "cds", "local"
]


class ConfigError(ValueError):
    """A configuration that cannot be used; its message is one line naming the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScannerConfig(_Strict):
    gain: float = Field(1.0, gt=0)
    offset: float = 0.0
    gamma: float = Field(1.0, gt=0)
    blur: float = Field(0.0, ge=0)  # Gaussian sigma in pixels
    noise: float = Field(0.05, ge=0)


class HospitalConfig(_Strict):
    site_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    num_patients: int = Field(ge=10)
    prevalence: float = Field(ge=0, le=1)
    scanner: ScannerConfig = ScannerConfig()


class PartitionConfig(_Strict):
    """Pooled phantom scans cut into sites: iid, dirichlet (label skew), quantity_skew, feature_skew."""

    kind: Literal["iid", "dirichlet", "quantity_skew", "feature_skew"] = "iid"
    num_sites: int = Field(6, ge=1, le=50)
    num_patients: int = Field(1580, ge=20)  # pooled scans (the six default hospitals hold 1580)
    prevalence: float = Field(0.45, ge=0, le=1)
    alpha: float = Field(0.5, gt=0)  # dirichlet: smaller is more skewed
    exponent: float = Field(1.0, ge=0)  # quantity_skew: size_k proportional to (k + 1) ** -exponent


class DataConfig(_Strict):
    # phantom: the embedded hospitals; phantom_seg: the same with lesion masks; sites: site data YAMLs.
    source: Literal["phantom", "phantom_seg", "sites"] = "phantom"
    # The phantom federation: the built-in six hospitals (or the first num_sites of them), or your own list.
    num_sites: int | None = Field(None, ge=1, le=6)
    hospitals: list[HospitalConfig] | None = Field(None, min_length=1)
    image_size: int = Field(64, ge=16, le=256)
    # source: sites. One YAML per hospital (docs/data.md); relative paths are from the job YAML's folder.
    sites: list[Path] | None = Field(None, min_length=1)
    harmonize: HarmonizeConfig | None = None  # applied identically at every site (fedrad.data.harmonize)
    # Build the phantom federation by partitioning pooled phantom data instead (fedrad.data.partition).
    partition: PartitionConfig | None = None

    @model_validator(mode="after")
    def _sites_with_source(self) -> DataConfig:
        if (self.source == "sites") != (self.sites is not None):
            raise ValueError("data.sites (a list of site YAMLs) is required with source 'sites', and only then")
        return self


class TaskConfig(_Strict):
    # auto: segmentation for phantom_seg or mask targets, tabular for feature vectors, else classification.
    kind: Literal["auto", "classification", "segmentation", "tabular"] = "auto"
    channels: tuple[int, ...] = Field((16, 32, 64), min_length=1)  # CNN stages, or UNet levels
    hidden: tuple[int, ...] = Field((32, 16), min_length=1)  # tabular MLP widths
    # The model's input and output sizes. Unset, they come from the data; a deployed job with
    # data.source 'sites' must set them (the server has no data, and two sites may see different labels).
    in_channels: int | None = Field(None, ge=1)  # image channels, or tabular features
    num_classes: int | None = Field(None, ge=2)  # classification and tabular


class TrainConfig(_Strict):
    rounds: int = Field(15, ge=1)
    local_epochs: int = Field(1, ge=1)  # per round; CDS and local-only get rounds x local_epochs epochs too
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_decay: float = Field(1.0, gt=0, le=1)  # round r trains with lr * lr_decay**r, for every method

    def fit(self) -> FitConfig:
        return FitConfig(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            lr_decay=self.lr_decay,
        )


class StrategyConfig(_Strict):
    name: MethodName = "fedavg"
    fraction: float = Field(1.0, gt=0, le=1)  # FedAvg: share of sites asked per round
    min_sites: int = Field(1, ge=1)
    prox_mu: float = Field(0.01, gt=0)  # FedProx's proximal weight
    server_lr: float = Field(0.01, gt=0)  # FedAdam / FedAvgM server step (FedAvgM with 1.0 and momentum 0 = FedAvg)
    server_momentum: float = Field(0.9, ge=0, lt=1)  # FedAvgM's beta, FedAdam's beta1
    # SWT / CWT: the visiting order (every site once), or None for a seeded-random one.
    order: list[str] | None = None
    patience: int = Field(3, ge=1)  # SWT: epochs without a better validation loss before moving on
    reshuffle: bool = False  # CWT: a new seeded order each cycle
    ensemble_rule: Literal["mean", "vote"] = "mean"  # ensemble: average probabilities or majority vote


class EvaluationConfig(_Strict):
    every: int = Field(1, ge=1)  # evaluate every N rounds (and always after the last)


class JobConfig(_Strict):
    name: str = "fedrad-job"
    seed: int = 0
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = StrategyConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _kind_fits_source(self) -> JobConfig:
        source, kind = self.data.source, self.task.kind
        if source == "phantom_seg" and kind not in ("auto", "segmentation"):
            raise ValueError(f"task.kind '{kind}' does not fit data.source 'phantom_seg' (lesion masks)")
        if source == "phantom" and kind == "tabular":
            raise ValueError("task.kind 'tabular' does not fit data.source 'phantom' (images)")
        return self

    def job_hash(self) -> str:
        """sha256 of the resolved configuration: what a site's admin approves."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = len(error.errors()) - 1
    return f"{path}: key '{key}': {message}" + (f" (and {more} more)" if more else "")


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a job YAML; raise ConfigError with one line naming the file and key."""
    path = Path(path)
    raw = read_yaml_mapping(path, ConfigError, empty_ok=True)
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    return _with_base(config, path.parent)


def _with_base(config: JobConfig, base: Path) -> JobConfig:
    """Site YAML paths taken from the job YAML's folder when relative."""
    if not config.data.sites:
        return config
    sites = [p if p.is_absolute() else base / p for p in config.data.sites]
    return config.model_copy(update={"data": config.data.model_copy(update={"sites": sites})})
