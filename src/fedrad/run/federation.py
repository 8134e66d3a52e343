"""A job's federation: its sites' data (phantom hospitals or site YAMLs), harmonised, and the task that fits it.

`data.source` picks the sites:
- `phantom`: the embedded hospitals, lesion present / absent;
- `phantom_seg`: the same hospitals with lesion masks as targets (segmentation);
- `sites`: a list of site data YAMLs, each read with `fedrad.data.readers.load_site_data`.

Every skipped input is reported (one line naming the file) and counted; a site with no usable data
stops the job with a message naming its YAML. With `data.harmonize`, every site applies the job's
preprocessing (a site YAML's images as they are read, with their real geometry) and a site whose
fingerprint differs is refused.

Example:
    >>> federation = load_federation(JobConfig())  # doctest: +SKIP
    >>> task = build_task_for(config, federation.sites)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedrad.config import JobConfig
from fedrad.data.base import SiteData
from fedrad.data.harmonize import HarmonizationError, Harmonizer, verify_site
from fedrad.data.partition import phantom_partition
from fedrad.data.phantom import DEFAULT_HOSPITALS, HospitalSpec, ScannerProfile, phantom_sites
from fedrad.data.readers import SiteDataConfigError, Skipped, load_site_data
from fedrad.privacy.local import LocalPrivacy, strategy_refusal
from fedrad.strategies import registry
from fedrad.tasks import ClassificationTask, Task
from fedrad.tasks.base import ModelSpecError
from fedrad.tasks.segmentation import SegmentationTask
from fedrad.tasks.tabular import TabularTask

log = logging.getLogger("fedrad.data")


class FederationError(ValueError):
    """Sites that cannot make a federation (no usable data, mismatched shapes or preprocessing)."""


@dataclass
class Federation:
    sites: list[SiteData]
    skipped: dict[str, list[Skipped]] = field(default_factory=dict)  # site_id -> items left out

    @property
    def num_skipped(self) -> int:
        return sum(len(s) for s in self.skipped.values())


def _phantom(config: JobConfig, segmentation: bool) -> list[SiteData]:
    data = config.data
    if data.partition is not None and not segmentation:  # pooled phantom scans cut into sites
        p = data.partition
        return phantom_partition(p.kind, p.num_sites, p.num_patients, p.prevalence, config.seed,
                                 data.image_size, p.alpha, p.exponent)  # fmt: skip
    if data.hospitals is not None:
        specs = [
            HospitalSpec(h.site_id, ScannerProfile(**h.scanner.model_dump()), h.num_patients, h.prevalence)
            for h in data.hospitals
        ]
    else:
        specs = list(DEFAULT_HOSPITALS[: data.num_sites])
    return phantom_sites(specs, seed=config.seed, size=data.image_size, segmentation=segmentation)


def _read_sites(config: JobConfig, report: Callable[[str], None], harmonizer: Harmonizer | None) -> Federation:
    federation = Federation([])
    for path in config.site_paths():  # relative ones from the job YAML's folder
        try:
            data, skipped = load_site_data(path, harmonizer)
        except SiteDataConfigError as exc:
            raise FederationError(str(exc)) from None
        except ValueError as exc:  # a reader's "no usable data" (or a missing folder / CSV column)
            raise FederationError(f"site YAML {path}: {exc}") from None
        if data.site_id in {s.site_id for s in federation.sites}:
            raise FederationError(f"site YAML {path}: site_id {data.site_id!r} is used by another site")
        for item in skipped:
            report(f"site {data.site_id}: skipped {item}")
        if skipped:
            report(f"site {data.site_id}: {len(skipped)} item(s) skipped, {data.card.get('num_samples')} used")
        if len(data.train) < 2 or len(data.test) < 1:
            raise FederationError(
                f"site YAML {path}: site {data.site_id} has {len(data.train)} training and {len(data.test)} "
                "test example(s); it needs at least 2 and 1"
            )
        federation.sites.append(data)
        federation.skipped[data.site_id] = list(skipped)
    return federation


def job_harmonizer(config: JobConfig) -> Harmonizer | None:
    """The job's `data.harmonize` as a Harmonizer; None when the job declares no preprocessing."""
    return Harmonizer(config.data.harmonize) if config.data.harmonize is not None else None


def load_federation(config: JobConfig, report: Callable[[str], None] | None = None) -> Federation:
    """Every site of the job, harmonised and checked. `report` gets one line per skipped item."""
    report = report or log.warning
    harmonizer = job_harmonizer(config)
    if config.data.source == "sites":
        federation = _read_sites(config, report, harmonizer)  # harmonised as read
    else:
        federation = Federation(_phantom(config, segmentation=resolve_kind(config) == "segmentation"))
        if harmonizer is not None:
            federation.sites = [harmonizer.site(s) for s in federation.sites]
    if harmonizer is not None:
        check_preprocessing(federation.sites, harmonizer.fingerprint)
    check_shapes(federation.sites)
    return federation


def check_preprocessing(sites: Sequence[SiteData], expected: str | None) -> None:
    """Refuse the first site whose preprocessing fingerprint is not `expected` (FederationError)."""
    for data in sites:
        try:
            verify_site(data, expected)
        except HarmonizationError as exc:
            raise FederationError(str(exc)) from None


def check_shapes(sites: Sequence[SiteData]) -> None:
    """One model serves every site, so every site's inputs must have one shape."""
    first = sites[0]
    for data in sites[1:]:
        if data.train.inputs.shape[1:] != first.train.inputs.shape[1:]:
            raise FederationError(
                f"site {data.site_id}: inputs of shape {data.train.inputs.shape[1:]} differ from site "
                f"{first.site_id}'s {first.train.inputs.shape[1:]}; declare data.harmonize.size (images) "
                "or use the same feature columns (tabular)"
            )


def resolve_kind(config: JobConfig, sites: Sequence[SiteData] = ()) -> str:
    """The task kind: as configured, or (kind: auto) from the data source and the sites' arrays."""
    if config.task.kind != "auto":
        return config.task.kind
    if config.data.source != "sites":
        return "segmentation" if config.data.source == "phantom_seg" else "classification"
    if not sites:
        raise FederationError("job key 'task.kind' must be set (not 'auto') when the model is built without the "
                              "sites' data (the deployed server of a job with data.source 'sites')")
    train = sites[0].train
    if train.inputs.ndim == 2:
        return "tabular"
    return "segmentation" if train.targets.ndim == train.inputs.ndim else "classification"


def _num_classes(sites: Sequence[SiteData]) -> int:
    labels = [int(s.targets.max()) for d in sites for s in (d.train, d.val, d.test) if len(s)]
    return max(2, max(labels) + 1)


def check_strategy(name: str, kind: str) -> None:
    """Refuse a strategy that a task kind cannot support: FederationError, one line saying why."""
    reason = registry.get(name).supports(kind)
    if reason is not None:
        raise FederationError(f"strategy '{name}' cannot run a {kind} task: {reason}")


def build_task_for(config: JobConfig, sites: Sequence[SiteData] = ()) -> Task:
    """The task (model, loss, summable metrics) for the job's kind, sized from the job or the sites' data.

    `task.in_channels` / `task.num_classes`, when set, fix the model's size and every site's data
    must fit them; a deployed server (no sites) of a job reading site YAMLs needs them. A strategy
    the task kind cannot support (`strategy.name`, see `check_strategy`) is refused here, and so is one
    that local DP cannot run (`check_privacy`). With `privacy.mode: local` the task carries the job's
    LocalPrivacy, so its model is converted for DP-SGD wherever it is built; it carries `task.norm` and
    `task.freeze` likewise (a freeze prefix that matches no parameter, and fedbn with norm group, are
    refused here, FederationError, one line). `task.init` is read by `fedrad.run.simulate.initial_weights`.
    """
    kind = resolve_kind(config, sites)
    check_strategy(config.strategy.name, kind)
    check_privacy(config)
    if config.task.norm == "group" and config.strategy.name == "fedbn":
        raise FederationError("strategy 'fedbn' cannot run with task.norm 'group': FedBN keeps BatchNorm at each "
                              "site, and the model has none")  # fmt: skip
    task = _task_for(config, kind, sites)
    privacy = LocalPrivacy.from_config(config)  # local DP: the model converted alike at the server and every site
    # task.norm and task.freeze: the model built alike at the server and every site (fedrad.tasks.base.prepared)
    task = dataclasses.replace(task, privacy=privacy, norm=config.task.norm, freeze=tuple(config.task.freeze))
    if task.freeze:
        import torch

        try:
            with torch.random.fork_rng():  # a probe: the global random state is left as it was
                task.build_model()  # a prefix that matches nothing is refused before anything runs
        except ModelSpecError as exc:
            raise FederationError(str(exc)) from None
    return task


def check_privacy(config: JobConfig) -> None:
    """Refuse a strategy the job's privacy mode cannot run (local: `fedrad.privacy.local.strategy_refusal`,
    central: `fedrad.strategies.central_dp.refusal`): FederationError, one line."""
    from fedrad.strategies import central_dp  # lazy: dp-accounting

    mode, name = config.privacy.mode, config.strategy.name
    reason = {"local": strategy_refusal, "central": central_dp.refusal}.get(mode, lambda _: None)(name)
    if reason is not None:
        raise FederationError(f"strategy '{name}' cannot run with privacy mode '{mode}': {reason}")
    check_secure_aggregation(config)


def check_secure_aggregation(config: JobConfig) -> None:
    """Refuse what secure aggregation cannot compose with (FederationError, one line): a strategy that is
    not an average, central DP (it clips each update at the server, which the masks hide: local DP adds
    its noise at the site, before masking, and composes), robust aggregation (it needs each update)."""
    from fedrad.strategies import secure_agg

    if not config.secure_aggregation.enabled:
        return
    name = config.strategy.name
    reason = secure_agg.refusal(name)
    if reason is None and config.privacy.mode == "central":
        reason = ("secure_aggregation cannot run with privacy.mode central: central DP clips each site's update at "
                  "the server, which the masks hide (privacy.mode local adds the noise at each site, then masks)")
    aggregator = getattr(config.strategy, "aggregator", "mean")
    if reason is None and aggregator != "mean":
        reason = (f"secure_aggregation cannot run with strategy.aggregator {aggregator}: robust aggregation needs "
                  "each site's update, the masks reveal only their sum")
    if reason is not None:
        raise FederationError(reason)


def _task_for(config: JobConfig, kind: str, sites: Sequence[SiteData]) -> Task:
    channels = tuple(config.task.channels)
    declared_inputs, declared_classes = config.task.in_channels, config.task.num_classes
    if not sites:  # nothing to size from: the job's declared sizes, or the phantom's single-channel images
        undeclared = declared_inputs is None or (kind != "segmentation" and declared_classes is None)
        if config.data.source == "sites" and undeclared:
            raise FederationError(
                "job key 'task.in_channels' and 'task.num_classes' must be set when data.source is 'sites' "
                "and the model is built without the sites' data (the deployed server)"
            )
        inputs, classes = declared_inputs or 1, declared_classes or 2
        if kind == "segmentation":
            return SegmentationTask(in_channels=inputs, channels=channels)
        if kind == "tabular":
            return TabularTask(inputs, classes, tuple(config.task.hidden))
        return ClassificationTask(in_channels=inputs, num_classes=classes, channels=channels)
    train = sites[0].train
    wants_masks = kind == "segmentation"
    for data in sites:
        has_masks = data.train.targets.ndim == data.train.inputs.ndim and data.train.inputs.ndim >= 4
        if kind == "tabular" and data.train.inputs.ndim != 2:
            raise FederationError(f"site {data.site_id}: task.kind 'tabular' needs (N, F) features, "
                                  f"got inputs of shape {data.train.inputs.shape}")  # fmt: skip
        if kind != "tabular" and has_masks != wants_masks:
            what = "masks" if has_masks else "class labels"
            raise FederationError(f"site {data.site_id}: task.kind '{kind}' does not fit its targets ({what})")
        if declared_inputs is not None and data.train.inputs.shape[1] != declared_inputs:
            raise FederationError(f"site {data.site_id}: inputs have {data.train.inputs.shape[1]} channels or "
                                  f"features, the job's task.in_channels is {declared_inputs}")  # fmt: skip
    classes = _num_classes(sites)
    if declared_classes is not None and kind != "segmentation":
        if classes > declared_classes:
            raise FederationError(f"a site has label {classes - 1}: job key task.num_classes is {declared_classes}")
        classes = declared_classes
    if kind == "segmentation":
        if any(np.any((d.train.targets != 0) & (d.train.targets != 1)) for d in sites):
            raise FederationError("segmentation needs binary masks (0 / 1); set binarize: true in the site YAMLs")
        return SegmentationTask(in_channels=train.inputs.shape[1], channels=channels)
    if kind == "tabular":
        return TabularTask(train.inputs.shape[1], classes, tuple(config.task.hidden))
    return ClassificationTask(in_channels=train.inputs.shape[1], num_classes=classes, channels=channels)
