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
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedrad.data.harmonize import HarmonizeConfig
from fedrad.secagg.participant import SecAggSettings
from fedrad.server.validation import UpdateValidator
from fedrad.strategies import registry
from fedrad.strategies.registry import StrategySection, UnknownStrategyError
from fedrad.types import FitConfig
from fedrad.yamlfile import read_yaml_mapping


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
    # source: sites. One YAML per hospital (docs/data.md); relative paths are from the job YAML's folder
    # (JobConfig.site_paths). Kept as written: the job hash and config.yaml do not depend on that folder.
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
    # The CNN's / UNet's normalisation: batch (BatchNorm) or group (GroupNorm, as Opacus' ModuleValidator.fix
    # makes of each BatchNorm under local DP). With group the model is the same with and without local DP,
    # so one `init` file serves both. The tabular MLP has no normalisation: it changes nothing there.
    norm: Literal["batch", "group"] = "batch"
    # Public pretraining, private fine-tuning (docs/privacy.md). `init`: a safetensors file of the model's
    # initial weights, relative to the job YAML's folder (like data.sites); `init_sha256` its digest, which
    # the job hash covers: a site's admin approves the content, not a path. Both or neither.
    init: Path | None = None
    init_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # Module-name prefixes ("features", "features.0", "head.bias") whose parameters no site trains; a prefix
    # that matches no parameter of the built model is refused. Frozen BatchNorm keeps its running statistics.
    freeze: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")], ...] = ()

    @model_validator(mode="after")
    def _init_with_its_digest(self) -> TaskConfig:
        if (self.init is None) != (self.init_sha256 is None):
            raise ValueError("task.init and task.init_sha256 go together: the file of initial weights and its "
                             "sha256 (`sha256sum FILE`), which the job hash covers")
        return self

    @model_serializer(mode="wrap")
    def _new_keys_when_set(self, handler: SerializerFunctionWrapHandler) -> dict:
        """norm, init, init_sha256 and freeze left at their defaults are not written (config.yaml, the job
        hash): a job that does not use them keeps the dump, and the hash, it had before them."""
        data = handler(self)
        fields = type(self).model_fields
        return {k: v for k, v in data.items()
                if k not in ("norm", "init", "init_sha256", "freeze") or getattr(self, k) != fields[k].default}

    def init_file(self, folder: Path | None) -> Path | None:
        """`init` taken from `folder` (the job YAML's) when relative; None when the job has none."""
        if self.init is None:
            return None
        return self.init if self.init.is_absolute() else (folder or Path()) / self.init


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


def _strategy_section(value: object) -> StrategySection:
    """The `strategy:` block as the section its `name` registered (default fedavg), validated by it.

    A union discriminated on `name` through the registry. Not pydantic's tagged union: that puts the
    tag into an error's location ('strategy.fedavg.prox_mu'); here it is the YAML key ('strategy.prox_mu').
    """
    if isinstance(value, StrategySection):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("strategy_section", "expected a mapping with a strategy 'name'")
    name = value.get("name", "fedavg")
    try:
        section = registry.get(str(name)).section
    except UnknownStrategyError as exc:
        error = PydanticCustomError("unknown_strategy", str(exc))  # no context: the message is not a template
        line = {"type": error, "loc": ("name",), "input": name}
        raise ValidationError.from_exception_data("strategy", [line]) from None
    return section.model_validate(value)  # its errors are located under 'strategy'


# The chosen strategy's own section (fedrad.strategies.registry): its keys only, so an unknown key or
# another strategy's (prox_mu under fedavg) is an error, and the job hash covers only its settings.
StrategyConfig = Annotated[SerializeAsAny[StrategySection], PlainValidator(_strategy_section)]


class EvaluationConfig(_Strict):
    every: int = Field(1, ge=1)  # evaluate every N rounds (and always after the last)


class ValidationConfig(_Strict):
    """How the server bounds each site's update (fedrad.server.validation). Part of the job, so the
    job hash covers it: every site's admin approves how far one other site's update may move the
    model, and a server cannot loosen it without the sites seeing another hash."""

    # An update whose L2 norm exceeds this many times the previous round's median accepted norm (in
    # round 0: the norm of the model sent) is rejected; null: no relative bound. 10 is about twice the
    # largest honest ratio measured on the phantom jobs for every strategy (docs/deploy.md).
    norm_multiplier: float | None = Field(10.0, gt=0)
    max_update_norm: float | None = Field(None, gt=0)  # an absolute bound on the update's L2 norm; null: none

    def validator(self) -> UpdateValidator:
        return UpdateValidator(max_update_norm=self.max_update_norm, norm_multiplier=self.norm_multiplier)


class PrivacyConfig(_Strict):
    """Differential privacy (docs/privacy.md); `mode: none` (the default) is off.

    `local`: DP-SGD at every site (Opacus: per-sample clipping to `max_grad_norm`, Gaussian noise,
    Poisson sampling); `epsilon` is each site's budget for the whole job at `delta`, and the noise
    is calibrated so that the planned job fits it. `central`: DP-FedAvg at the server (each site's
    update clipped to `max_grad_norm`, Gaussian noise on the aggregate); `epsilon` is the
    federation's user-level (here: site-level) budget. Give `noise_multiplier` instead of
    `epsilon` to fix the noise and have the epsilon spent reported; in local mode, give both to fix
    the noise and have each site stop at `epsilon`.
    """

    mode: Literal["none", "local", "central"] = "none"
    epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"  # Opacus' accountants (local mode)

    @model_validator(mode="after")
    def _budget_or_noise(self) -> PrivacyConfig:
        both = self.epsilon is not None and self.noise_multiplier is not None
        if self.mode != "none" and (self.epsilon is None) == (self.noise_multiplier is None) and not (
            both and self.mode == "local"  # local: the noise fixed, each site stopping at epsilon
        ):
            raise ValueError(f"privacy mode '{self.mode}' needs exactly one of epsilon and noise_multiplier")
        return self


class SecureAggregationConfig(_Strict):
    """Secure aggregation (docs/secure_aggregation.md): the server learns only the sum of the updates.

    `threshold`: t, the sites that must stay until the unmasking (and the shares that rebuild a
    dropped site's masks); null is a majority of each round's asked sites. It must be a majority
    (more than half the sites asked), so the server can never gather both secrets of one site.
    `clip_norm`: each site clips its update to this L2 norm before masking (the server can no longer
    check norms); it also sets the fixed point, 2^-f with clip_norm x 2^f <= 2^30 (f = 23 for 100).
    """

    enabled: bool = False
    threshold: int | None = Field(None, ge=2)
    clip_norm: float = Field(100.0, gt=0, le=2**20)

    def settings(self) -> SecAggSettings | None:
        """What the sites and the server run (None: off)."""
        return SecAggSettings(self.threshold, self.clip_norm) if self.enabled else None


class AttackConfig(_Strict):
    """Hostile sites, to measure the defences (fedrad.run.attack, docs/robustness.md); `fedrad run` and
    `fedrad compare` only, `fedrad server` refuses a job with one. The attackers are the last `sites`
    training sites of the job, in its order; 0 is no attack (a sweep's attack-free point).

    `scale`: sign_flip s (sends global - s * update; "boosted sign-flipped" is s > 1; default 1), boost s
    (global + s * update; default the number of sites asked, model replacement), noise the standard
    deviation of the Gaussian update (default 1), little_is_enough z (mean - z * std of the honest updates;
    default Baruch et al.'s z_max for the round); label_flip takes none.
    """

    kind: Literal["label_flip", "sign_flip", "boost", "noise", "little_is_enough"]
    sites: int = Field(1, ge=0)
    scale: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _scale_fits_kind(self) -> AttackConfig:
        if self.kind == "label_flip" and self.scale is not None:
            raise ValueError("attack.scale does not apply to label_flip (the attackers train on flipped labels)")
        return self


class JobConfig(_Strict):
    name: str = "fedrad-job"
    seed: int = 0
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = registry.get("fedavg").section()
    evaluation: EvaluationConfig = EvaluationConfig()
    validation: ValidationConfig = ValidationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    attack: AttackConfig | None = None  # simulated hostile sites (simulation only)
    # The folder of the job YAML it was read from (load_config): where relative data.sites are.
    # Not a field: the job hash, which every site approves, is of the content, not of where it lies.
    _folder: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _kind_fits_source(self) -> JobConfig:
        source, kind = self.data.source, self.task.kind
        if source == "phantom_seg" and kind not in ("auto", "segmentation"):
            raise ValueError(f"task.kind '{kind}' does not fit data.source 'phantom_seg' (lesion masks)")
        if source == "phantom" and kind == "tabular":
            raise ValueError("task.kind 'tabular' does not fit data.source 'phantom' (images)")
        return self

    @model_validator(mode="after")
    def _local_dp_fits_strategy(self) -> JobConfig:
        if self.privacy.mode == "local":
            from fedrad.privacy.local import strategy_refusal  # lazy: torch

            reason = strategy_refusal(self.strategy.name)
            if reason is not None:
                raise ValueError(f"strategy '{self.strategy.name}' cannot run with privacy mode 'local': {reason}")
        return self

    def site_paths(self) -> list[Path]:
        """`data.sites`, each relative one taken from the job YAML's folder (the current folder for a
        job not read from a file); empty for a phantom job."""
        base = self._folder or Path()
        return [path if path.is_absolute() else base / path for path in self.data.sites or []]

    def job_hash(self) -> str:
        """sha256 of the validated configuration, defaults filled in: what a site's admin approves.

        It depends on the job's content only: `data.sites` is hashed as written, so the server and
        the clients agree whatever path each opened the job file by.
        """
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def for_strategy(config: JobConfig, name: str) -> JobConfig:
    """The job run with strategy `name` (`fedrad compare` runs several on one job): the job's own section
    when it names `name`, else `name`'s defaults with the job's values for the keys the two share
    (`order` from swt to swt-reversed or cwt, `fraction` from fedavg to fedprox). Unknown name: ValueError."""
    if config.strategy.name == name:
        return config
    section = registry.get(name).section
    shared = {k: v for k, v in config.strategy.model_dump().items() if k in section.model_fields and k != "name"}
    return config.model_copy(update={"strategy": section.model_validate({**shared, "name": name})})


def _describe(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = len(error.errors()) - 1
    return f"{path}: key '{key}': {message}" + (f" (and {more} more)" if more else "")


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a job YAML; raise ConfigError with one line naming the file and key."""
    path = Path(path)
    raw = read_yaml_mapping(path, ConfigError, mapping_hint="must be a mapping of job keys (an empty file is no "
                            "job: examples/phantom.yaml is one)")  # fmt: skip
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    config._folder = path.parent  # for site_paths(); the content, and so the hash, is left as written
    return config
