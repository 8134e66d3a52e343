"""`fedrad audit RUN_DIR`: the leakage audit a privacy officer asks for, of a finished phantom run.

1) Membership inference on the final model (fedrad.privacy.audit): a loss-threshold and a
   reference-model attack, each site's training scans against fresh scans of the same hospitals;
   ROC AUC and TPR at 1% and 0.1% FPR per site and pooled.
2) Gradient inversion (fedrad.privacy.inversion) of one site's one-step update on a small batch,
   without and with DP-SGD: PSNR / SSIM, and the picture `audit_inversion.png`.

Both are written to RUN_DIR/audit.json and printed as tables. Only a phantom job can be audited:
the generator is what tells members from non-members, and real data cannot be regenerated. A run
whose models stay at the sites (ensemble, FedBN's BatchNorm) is refused in one line. Exit code 0:
audited; 2: the run folder cannot be audited.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from fedrad.config import ConfigError, JobConfig, load_config
from fedrad.privacy import audit as mia
from fedrad.privacy.inversion import InversionSettings, demonstrate, save_figure

console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
PICTURE = "audit_inversion.png"
UNSUPPORTED = {"fedbn": "each site's BatchNorm stays at the site and model.safetensors holds the initial one, "
                        "which no site uses"}  # fmt: skip


def load_run(run_dir: Path) -> tuple[JobConfig, list, dict]:
    """The run's job, its regenerated sites and its saved models by name; AuditError naming the file."""
    from safetensors.numpy import load_file

    from fedrad.run.federation import FederationError
    from fedrad.run.simulate import build_sites

    config_path, model_path = run_dir / "config.yaml", run_dir / "model.safetensors"
    for path in (config_path, model_path):
        if not path.is_file():
            raise mia.AuditError(f"{path}: not found (a run folder written by `fedrad run` holds it)")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise mia.AuditError(str(exc)) from None
    if config.data.source != "phantom":
        what = "real data cannot be regenerated" if config.data.source == "sites" else "not supported yet"
        raise mia.AuditError(f"{config_path}: data.source '{config.data.source}': the audit needs a phantom "
                         f"classification job, whose generator gives members and non-members ({what})")  # fmt: skip
    init = config.task.init_file(config_path.parent)
    if init is not None and not init.is_file():  # the references retrain from it, as the run did
        raise mia.AuditError(f"{config_path}: key 'task.init': {init} not found; the audit trains its reference "
                             "models from that file as the run did: copy it into the run folder")
    if config.strategy.name in UNSUPPORTED:
        raise mia.AuditError(f"{config_path}: strategy '{config.strategy.name}' is not supported: "
                         f"{UNSUPPORTED[config.strategy.name]}")  # fmt: skip
    try:
        flat, sites = load_file(str(model_path)), build_sites(config)
    except FederationError as exc:
        raise mia.AuditError(f"{config_path}: {exc}") from None
    except Exception as exc:  # safetensors raises its own errors for a truncated or foreign file
        raise mia.AuditError(f"{model_path}: unreadable ({exc})") from None
    _check_counts(run_dir / "summary.json", sites)
    return config, sites, flat


def _check_counts(summary_path: Path, sites: list) -> None:
    """The regenerated training splits must be the ones the run reports having trained on."""
    if not summary_path.is_file():
        return
    reported = json.loads(summary_path.read_text()).get("sites", {})
    for data in sites:
        n = reported.get(data.site_id, {}).get("num_train")
        if n is not None and n != data.num_train:
            raise mia.AuditError(f"{summary_path}: site {data.site_id} trained on {n} scans, the regenerated job "
                             f"gives {data.num_train}: this is not the run of config.yaml")  # fmt: skip


def dp_noise(config: JobConfig, num_train: int, epsilon: float) -> tuple[float, float | None]:
    """(noise multiplier, epsilon it stands for): the job's own, or the one a site of `num_train` examples
    calibrates to spend `epsilon` at the job's delta over its whole training (fedrad.privacy.local: the
    same sample rate and step count as the site's DP-SGD)."""
    from fedrad.privacy.local import LocalPrivacy

    privacy = config.privacy
    if privacy.mode != "none" and privacy.noise_multiplier is not None:
        return privacy.noise_multiplier, None
    target = privacy.epsilon if privacy.mode != "none" and privacy.epsilon is not None else epsilon
    train = config.train
    local = LocalPrivacy(target, privacy.delta, privacy.max_grad_norm, None, privacy.accountant,
                         train.rounds, train.local_epochs, train.batch_size)  # fmt: skip
    return local.noise_for(max(num_train, 1)), float(target)


def inversion_section(config, task, targets, sites, run_dir: Path, site: str | None, batch: int, size: int,
                      settings: InversionSettings, epsilon: float) -> dict:  # fmt: skip
    """Invert `site`'s (default: the first) one-step update on its first `batch` training scans, resized."""
    data = next((d for d in sites if d.site_id == (site or sites[0].site_id)), None)
    if data is None:
        raise mia.AuditError(f"--inversion-site {site}: not a site of this run ({', '.join(d.site_id for d in sites)})")
    scans = torch.from_numpy(data.train.inputs[:batch])
    images = torch.nn.functional.interpolate(scans, size=(size, size), mode="area").numpy()
    sigma, eps = dp_noise(config, data.num_train, epsilon)
    model = mia.build_model(task, targets[data.site_id], f"site {data.site_id}")
    demo = demonstrate(model, images, data.train.targets[:batch], config.privacy.max_grad_norm, sigma, settings)
    stated = f"epsilon {eps:g}" if eps is not None else "the job's noise"
    save_figure(demo, run_dir / PICTURE, f"site {data.site_id}: one-step update on {batch} scan(s) of {size}x{size}; "
                f"DP: clip {config.privacy.max_grad_norm:g}, noise multiplier {sigma:.2f} ({stated})")  # fmt: skip
    dp = {**demo.metrics["dp"], "noise_multiplier": sigma, "epsilon": eps, "delta": config.privacy.delta,
          "max_grad_norm": config.privacy.max_grad_norm}  # fmt: skip
    return {"no_dp": demo.metrics["no_dp"], "dp": dp, "random": demo.metrics["random"], "picture": PICTURE,
            "site": data.site_id, "batch": batch, "image_size": size, "iterations": settings.iterations}  # fmt: skip


def audit_run(run_dir: Path, settings: mia.AuditSettings, inversion: dict) -> dict:
    """The whole audit of one run folder as audit.json holds it (also written there)."""
    from fedrad.run.simulate import build_task

    started = time.perf_counter()
    config, sites, flat = load_run(run_dir)
    task = build_task(config, sites)
    targets = mia.site_models(flat, [d.site_id for d in sites], str(run_dir / "model.safetensors"))
    members = {d.site_id: d.train for d in sites}
    non_members = mia.non_member_splits(config, settings.non_members)
    result = mia.membership_audit(config, task, targets, members, non_members, mia.train_references(config, settings))
    result["inversion"] = inversion_section(config, task, targets, sites, run_dir, **inversion)
    result |= {"strategy": config.strategy.name, "per_site_models": any("/" in n for n in flat),
               "settings": {"references": settings.references, "reference_scale": settings.reference_scale,
                            "non_members_per_site": settings.non_members},
               "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    (run_dir / "audit.json").write_text(json.dumps(result, indent=2))
    return result


def _row(name: str, counts: dict, by_attack: dict) -> list[str]:
    cells = [name, str(counts["members"]), str(counts["non_members"])]
    for attack in ("loss", "reference"):
        m = by_attack.get(attack)
        cells += [f"{m['auc']:.3f}", f"{m['tpr_at_1pct_fpr']:.3f}", f"{m['tpr_at_01pct_fpr']:.3f}"] if m else ["-"] * 3
    return cells


def print_audit(result: dict) -> None:
    header = ["site", "members", "non-members", "loss AUC", "TPR@1%", "TPR@0.1%", "ref AUC", "TPR@1%", "TPR@0.1%"]
    table = Table(title="membership inference (higher: more leakage; AUC 0.5 = chance)", title_justify="left")
    for column in header:
        table.add_column(column)
    for site, by_attack in result["sites"].items():
        table.add_row(*_row(site, next(iter(by_attack.values())), by_attack))
    table.add_row(*_row("pooled", result["membership"], result["attacks"]))
    console.print(table)
    m = result["membership"]
    console.print(f"stronger attack: {m['attack']} (pooled AUC {m['auc']:.3f}); non-members: "
                  f"{result['populations']['non_members']}; references: {result['populations']['references']}")
    inv = result["inversion"]
    size = f"{inv['image_size']}x{inv['image_size']}"
    title = f"gradient inversion of site {inv['site']}'s update ({inv['batch']} scan(s), {size}, "
    title += f"{inv['iterations']} steps)"
    rows = Table(title=title, title_justify="left")
    for column in ("update", "PSNR dB", "SSIM"):
        rows.add_column(column)
    sigma = inv["dp"]["noise_multiplier"]
    labels = {"no_dp": "no DP", "dp": f"DP-SGD (noise multiplier {sigma:.2f})", "random": "random start"}
    for key, label in labels.items():
        rows.add_row(label, f"{inv[key]['psnr']:.2f}", f"{inv[key]['ssim']:.3f}")
    console.print(rows)
    console.print(f"picture: {inv['picture']}; wall {result['wall_s']} s")


def register(app: typer.Typer) -> None:
    """Add `fedrad audit RUN_DIR` to fedrad's app."""

    @app.command()
    def audit(
        run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a run folder of a phantom job")],
        references: Annotated[int, typer.Option(min=0, help="reference models (0: the loss attack only)")] = 4,
        reference_scale: Annotated[float, typer.Option(help="share of each hospital's patients a reference trains on")] = 0.5,  # noqa: E501
        non_members: Annotated[int, typer.Option(min=100, help="fresh non-member scans per site")] = 1000,
        inversion_site: Annotated[str | None, typer.Option(help="the site whose update is inverted")] = None,
        inversion_batch: Annotated[int, typer.Option(min=1, max=8, help="scans in the inverted batch")] = 1,
        inversion_size: Annotated[int, typer.Option(min=8, max=64, help="their size in pixels")] = 16,
        iterations: Annotated[int, typer.Option(min=1, help="inversion iterations (Adam)")] = 300,
        epsilon: Annotated[float, typer.Option(help="DP budget of the inversion's DP-SGD update (a job without "
                                               "privacy; a DP job uses its own)")] = 8.0,  # fmt: skip
    ) -> None:
        """Membership inference and gradient inversion against a finished phantom run; writes RUN_DIR/audit.json."""
        try:
            settings = mia.AuditSettings(references, reference_scale, non_members)
        except ValueError as exc:
            errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        inversion = {"site": inversion_site, "batch": inversion_batch, "size": inversion_size,
                     "settings": InversionSettings(iterations=iterations), "epsilon": epsilon}  # fmt: skip
        try:
            result = audit_run(run_dir, settings, inversion)
        except mia.AuditError as exc:
            errors.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        print_audit(result)
        console.print(f"wrote {run_dir / 'audit.json'}")
        if (run_dir.parent / "comparison.json").is_file():  # a method of `fedrad compare`: its report shows it
            from fedrad.report.comparison import rebuild_report

            rebuild_report(run_dir.parent)
            console.print(f"report: {run_dir.parent / 'report.md'} (with this audit)")

