"""What does local DP (DP-SGD at each site) cost a job, epsilon by epsilon, beside its no-DP baseline?

Runs the job (default examples/phantom_dp.yaml; `--job examples/phantom_dp_pretrained.yaml` for public
pretraining and private fine-tuning of the head) through the simulator's own machinery
(`fedrad.run.simulate.MethodRun`, `build_sites`), in this process: first without DP
(`privacy: {mode: none}`, the same recipe otherwise: the baseline), then with
`privacy: {mode: local, epsilon: E}` for each E (the job's delta and max_grad_norm; its
noise_multiplier cleared, so each site calibrates its own noise to the planned job), for each
method. Prints, per run: epsilon, method, pooled balanced accuracy (and its difference to the
same method without DP), the largest epsilon any site spent, the noise multipliers the sites
calibrated (from metrics.jsonl's train metrics), the last round's mean training loss and the
wall seconds. Each run's folder (summary.json, metrics.jsonl, model.safetensors, config.yaml)
stays under --out, so `fedrad audit OUT/eps-8/fedavg` can attack it (a job's `task.init` file is
copied beside each run's config.yaml, where its relative path then points); the table is also
written to OUT/sweep.json.

    python bench/dp_sweep.py [--job examples/phantom_dp.yaml] [--epsilons none 8 4 1]
                             [--methods fedavg cds] [--set train.lr=0.2 --set task.channels=[8,16]]
                             [--out runs/dp_sweep] [--threads 1]

`--set KEY=VALUE` overrides any job key (VALUE is read as YAML), e.g. to try a recipe without a
new file; `none` (or `inf`) in --epsilons is the no-DP run; `job` runs the job's privacy block as it is
(a fixed `privacy.noise_multiplier`, say). Independent of `fedrad compare --sweep`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import yaml

from fedrad.config import JobConfig, load_config
from fedrad.privacy.summary import EPSILON_SPENT, NOISE_MULTIPLIER
from fedrad.run.simulate import MethodRun, build_sites


def with_overrides(job: JobConfig, pairs: list[str]) -> JobConfig:
    """The job with each `a.b.c=VALUE` applied (VALUE parsed as YAML), validated again."""
    data = job.model_dump(mode="json")
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return _same_folder(JobConfig.model_validate(data), job)


def _same_folder(config: JobConfig, job: JobConfig) -> JobConfig:
    """`config` read from `job`'s folder: relative data.sites and task.init stay relative to the job YAML."""
    config._folder = job._folder
    return config


def with_epsilon(job: JobConfig, epsilon: float | None) -> JobConfig:
    """The job without DP (epsilon None), or with local DP at `epsilon` (noise calibrated per site)."""
    data = job.model_dump(mode="json")
    privacy = dict(data.get("privacy") or {})
    if epsilon is None:
        privacy = {"mode": "none"}
    else:
        privacy |= {"mode": "local", "epsilon": float(epsilon), "noise_multiplier": None}
    data["privacy"] = privacy
    return _same_folder(JobConfig.model_validate(data), job)


def parse_epsilon(text: str) -> float | str | None:
    """None: no DP; "job": the job's own privacy block as it is (a fixed noise_multiplier, say); else a budget."""
    if text.lower() == "job":
        return "job"
    return None if text.lower() in ("none", "inf", "nodp", "off") else float(text)


def noise_multipliers(run_dir: Path) -> dict[str, float]:
    """Each site's noise multiplier, as its first fit reply reported it (metrics.jsonl)."""
    noise: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        for site, metrics in json.loads(line).get("train", {}).items():
            if NOISE_MULTIPLIER in metrics:
                noise.setdefault(site, float(metrics[NOISE_MULTIPLIER]))
    return noise


def last_train_loss(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    if not lines:
        return math.nan
    losses = [m["train_loss"] for m in json.loads(lines[-1]).get("train", {}).values() if "train_loss" in m]
    return sum(losses) / len(losses) if losses else math.nan


def measure(config: JobConfig, method: str, out: Path) -> dict:
    started = time.perf_counter()
    sites = build_sites(config)
    summary = MethodRun(config, method, out, sites).run()
    wall = time.perf_counter() - started
    init = config.task.init_file(config._folder)
    if init is not None and not config.task.init.is_absolute():  # for `fedrad audit OUT`: beside config.yaml
        (out / config.task.init).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(init, out / config.task.init)
    spent = [s.get(EPSILON_SPENT, 0.0) for s in (summary.get("privacy") or {}).get("sites", {}).values()]
    return {
        "method": method,
        "balanced_accuracy": summary["pooled"]["balanced_accuracy"],
        "auc": summary["pooled"].get("auc"),
        "epsilon_spent_max": max(spent) if spent else None,
        "noise_multiplier": noise_multipliers(out),
        "train_loss": last_train_loss(out),
        "status": summary.get("status"),
        "wall_s": wall,
        "dir": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="examples/phantom_dp.yaml")
    parser.add_argument("--epsilons", nargs="+", default=["none", "8", "4", "1"])
    parser.add_argument("--methods", nargs="+", default=["fedavg", "cds"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/dp_sweep")
    parser.add_argument("--threads", type=int, default=1)  # torch threads
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    job = with_overrides(load_config(args.job), args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in args.epsilons:
        epsilon = parse_epsilon(text)
        config = job if epsilon == "job" else with_epsilon(job, epsilon)
        for method in args.methods:
            row = {"epsilon": epsilon} | measure(config, method, out / f"eps-{text}" / method)
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "sweep.json").write_text(json.dumps({"job": args.job, "overrides": args.overrides,
                                                        "rows": rows}, indent=2))  # fmt: skip
    baseline = {r["method"]: r["balanced_accuracy"] for r in rows if r["epsilon"] is None}
    fmt = {None: "none", "job": "job"}
    t = job.train
    print(
        f"\njob {args.job} {' '.join(args.overrides)}: rounds {t.rounds}, local_epochs {t.local_epochs}, "
        f"batch {t.batch_size}, lr {t.lr}, channels {list(job.task.channels)}, norm {job.task.norm}, "
        f"max_grad_norm {job.privacy.max_grad_norm}, delta {job.privacy.delta:g}"
        + (f", init {job.task.init} (sha256 {job.task.init_sha256[:12]}...)" if job.task.init else "")
        + (f", frozen {list(job.task.freeze)}" if job.task.freeze else "")
    )
    print(f"{'epsilon':>7} {'method':>7} {'bal.acc':>7} {'vs none':>7} {'eps max':>7} {'loss':>6} {'wall s':>7}  noise")
    for r in rows:
        eps = fmt.get(r["epsilon"]) or f"{r['epsilon']:g}"
        base = baseline.get(r["method"])
        diff = "" if base is None or r["epsilon"] in fmt else f"{r['balanced_accuracy'] - base:+7.3f}"
        spent = "-" if r["epsilon_spent_max"] is None else f"{r['epsilon_spent_max']:.2f}"
        noise = " ".join(f"{v:.2f}" for v in r["noise_multiplier"].values()) or "-"
        print(
            f"{eps:>7} {r['method']:>7} {r['balanced_accuracy']:7.3f} {diff:>7} {spent:>7} "
            f"{r['train_loss']:6.3f} {r['wall_s']:7.1f}  {noise}"
        )


if __name__ == "__main__":
    main()
