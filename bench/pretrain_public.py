"""Pretrain a job's model on public phantom data and write its `task.init` file (docs/privacy.md).

Public pretraining, private fine-tuning (Tramer & Boneh 2021; De et al. 2022): the feature
extractor is trained without DP on public data, which costs no privacy, and the federation then
trains only the parameters the job does not freeze (`task.freeze`), under DP-SGD at each site.

The public data: `PUBLIC_HOSPITALS`, four phantom hospitals that are not the federation's (their
own names, scanner profiles and patients), drawn from the phantom generator with the job's seed +
PUBLIC_SEED, so no patient of the federation, of the audit's non-members (seed + 104,729) or of its
reference models (seed + k x 7,919) is among them. The model is the job's as the job builds it
(`task.channels`, `task.norm`, and local DP's GroupNorm when `privacy.mode` is local; nothing
frozen while pretraining), started from the job's seeded initialisation and trained with plain SGD
(`fedrad.site.training.train_epochs`) on the public hospitals' pooled training splits.

What is written: the model's whole state_dict, except that every entry NOT under the job's
`task.freeze` prefixes (the head) is reset to the job's seeded initialisation (`--keep-head`
keeps the public head), so the federation learns its decision privately from a fixed, public
feature extractor. The file is a safetensors file with the recipe in its metadata; its sha256 is
what the job's `task.init_sha256` must say. Deterministic: the same job and options, the same torch
build and `--threads 1` give the same bytes (`--check` regenerates in memory and compares with the
job's file and digest).

Printed: the public validation balanced accuracy, and, for information only (nothing is chosen by
it), the public model's balanced accuracy on the federation's pooled test split before any
federated training (its own head, and the reset head that the file holds).

    python bench/pretrain_public.py [--job examples/phantom_dp_pretrained.yaml] [--out FILE]
                                    [--epochs 30] [--lr 0.05] [--momentum 0.9] [--batch-size 64]
                                    [--patients 600] [--keep-head] [--check] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedrad.config import load_config
from fedrad.data.base import concat_splits
from fedrad.data.phantom import HospitalSpec, ScannerProfile, phantom_sites
from fedrad.run.simulate import build_sites, build_task, initial_weights
from fedrad.site.handler import load_weights, model_weights
from fedrad.site.training import train_epochs
from fedrad.tasks.pretrained import init_bytes, sha256_of
from fedrad.types import FitConfig

PUBLIC_SEED = 65_537  # added to the job's seed: the public hospitals' phantom draw
# Public hospitals: not the federation's six (other scanners, other patients), 50% prevalence.
PUBLIC_HOSPITALS = (
    ("public-1", ScannerProfile(0.8, 0.15, 1.2, 0.5, 0.06)),
    ("public-2", ScannerProfile(1.2, -0.1, 0.9, 1.1, 0.08)),
    ("public-3", ScannerProfile(1.0, 0.3, 1.7, 0.2, 0.04)),
    ("public-4", ScannerProfile(0.75, -0.2, 0.6, 0.9, 0.07)),
)


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def pooled_balanced_accuracy(task, model, splits) -> float:
    split = concat_splits(splits)
    return float(task.metrics(task.evaluate(model, split.inputs, split.targets))["balanced_accuracy"])


def pretrain(job_path: str, args) -> tuple[bytes, dict]:
    config = load_config(job_path)
    if config.data.source != "phantom":
        sys.exit(f"error: {job_path}: data.source '{config.data.source}': public pretraining draws phantom data")
    freeze = tuple(config.task.freeze)
    if not freeze and not args.keep_head:
        sys.exit(f"error: {job_path}: task.freeze is empty: nothing would be kept of the pretraining "
                 "(give --keep-head to write the whole public model)")  # fmt: skip
    # The job's model as the job builds it (norm, local DP's GroupNorm), with nothing frozen while pretraining.
    task = dataclasses.replace(build_task(config), freeze=())
    seeded = initial_weights(task, config.seed)  # the job's own seeded initialisation (no init file)
    model = task.build_model()
    load_weights(model, seeded, "public")
    specs = [HospitalSpec(name, scanner, args.patients, 0.5) for name, scanner in PUBLIC_HOSPITALS]
    public = phantom_sites(specs, seed=config.seed + PUBLIC_SEED, size=config.data.image_size)
    train = concat_splits([s.train for s in public])
    fit = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                    weight_decay=args.weight_decay)  # fmt: skip
    started = time.perf_counter()
    outcome = train_epochs(task, model, train, fit, seed=config.seed + PUBLIC_SEED)
    wall = time.perf_counter() - started
    trained = {k: v.copy() for k, v in model_weights(model).items()}
    kept = trained if args.keep_head else {k: (v if _under(k, freeze) else seeded[k]) for k, v in trained.items()}
    federation = build_sites(config)  # for information only: how far public data alone gets
    report = {
        "public_train_scans": len(train),
        "public_val_balanced_accuracy": pooled_balanced_accuracy(task, model, [s.val for s in public]),
        "federation_test_balanced_accuracy_public_head": pooled_balanced_accuracy(
            task, model, [d.test for d in federation]),
        "train_loss": outcome.loss,
        "wall_s": round(wall, 1),
        "kept_from_pretraining": sorted(k for k in trained if args.keep_head or _under(k, freeze)),
        "reset_to_seeded_init": sorted(k for k in trained if not (args.keep_head or _under(k, freeze))),
    }
    load_weights(model, kept, "public")
    tests = [d.test for d in federation]
    report["federation_test_balanced_accuracy_file"] = pooled_balanced_accuracy(task, model, tests)
    metadata = {
        "written_by": "bench/pretrain_public.py",
        "job": config.name,
        "public_hospitals": [[n, dataclasses.asdict(s), args.patients, 0.5] for n, s in PUBLIC_HOSPITALS],
        "public_seed": config.seed + PUBLIC_SEED,
        "recipe": {"epochs": args.epochs, "lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size,
                   "weight_decay": args.weight_decay},
        "model": {"channels": list(config.task.channels), "norm": config.task.norm,
                  "privacy_mode": config.privacy.mode},
        "pretrained": "every entry" if args.keep_head else f"entries under {list(freeze)}; the rest: the seeded init",
    }
    return init_bytes(kept, metadata), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="examples/phantom_dp_pretrained.yaml")
    parser.add_argument("--out", default=None, help="default: the job's task.init")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patients", type=int, default=600, help="patients per public hospital")
    parser.add_argument("--keep-head", action="store_true", help="keep the public head instead of the seeded one")
    parser.add_argument("--check", action="store_true", help="compare with the job's file, write nothing")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    config = load_config(args.job)
    target = Path(args.out) if args.out else config.task.init_file(config._folder)
    if target is None:
        sys.exit(f"error: {args.job}: no task.init, and no --out")
    blob, report = pretrain(args.job, args)
    digest = hashlib.sha256(blob).hexdigest()
    print(json.dumps(report | {"sha256": digest, "torch": torch.__version__}, indent=2))
    if args.check:
        same_file = target.is_file() and target.read_bytes() == blob
        same_digest = config.task.init_sha256 == digest
        print(f"{target}: {'identical' if same_file else 'DIFFERENT'}; job's task.init_sha256 "
              f"{'matches' if same_digest else 'does NOT match'}")  # fmt: skip
        sys.exit(0 if same_file and same_digest else 1)
    target.write_bytes(blob)
    print(f"wrote {target} ({len(blob)} bytes), sha256 {sha256_of(target)}")
    if config.task.init_sha256 != digest:
        print(f"the job's task.init_sha256 is {config.task.init_sha256}: set it to {digest}")


if __name__ == "__main__":
    main()
