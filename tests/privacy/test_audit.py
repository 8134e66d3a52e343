from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedrad.cli import app
from fedrad.config import JobConfig
from fedrad.data.base import concat_splits
from fedrad.privacy.audit import AuditError, membership_audit, non_member_splits, roc_auc, site_models, tpr_at_fpr
from fedrad.run.simulate import MethodRun, build_sites, build_task
from fedrad.site.handler import model_weights
from fedrad.site.training import train_epochs
from fedrad.types import FitConfig
from tests.tiny import tiny_job


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is many times faster on busy cores, and the sums do not depend on the machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_auc_is_the_share_of_member_non_member_pairs_ranked_right_ties_counting_half():
    rng = np.random.default_rng(0)
    members, non_members = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 55).astype(float)  # many ties

    direct = np.mean([(m > n) + 0.5 * (m == n) for m in members for n in non_members])

    assert roc_auc(members, non_members) == pytest.approx(direct, abs=1e-12)
    assert roc_auc(non_members, non_members) == pytest.approx(0.5)
    assert roc_auc(members + 10, members) == 1.0 and roc_auc(members, members + 10) == 0.0


def test_tpr_at_fpr_lets_through_at_most_floor_fpr_times_the_non_members():
    non_members = np.arange(1000) / 1000  # 0.000 ... 0.999
    members = np.array([0.9995, 0.9985, 0.5, 0.9895])

    # 0.1%: one non-member may pass (0.999), so the threshold is 0.998; 1%: ten pass, threshold 0.989.
    assert tpr_at_fpr(members, non_members, 0.001) == 0.5
    assert tpr_at_fpr(members, non_members, 0.01) == 0.75
    assert tpr_at_fpr(members, non_members[500:], 0.001) == 0.25  # under 1 / fpr: above every non-member (0.999)


def test_each_site_is_scored_by_its_own_model_and_an_ensembles_initialisation_is_refused():
    flat = {"s1/w": np.zeros(2), "s2/w": np.ones(2)}

    models = site_models(flat, ["s1", "s2"], "model.safetensors")

    assert models["s2"]["w"].tolist() == [1.0, 1.0] and models["s1"]["w"].tolist() == [0.0, 0.0]
    assert site_models({"w": np.ones(1)}, ["s1", "s2"], "m")["s2"]["w"] is not None
    with pytest.raises(AuditError, match="init"):
        site_models({"init/w": np.zeros(2)}, ["s1", "s2"], "model.safetensors")


def test_non_members_are_fresh_scans_of_the_same_hospitals_not_the_training_ones():
    config = JobConfig.model_validate(tiny_job())
    sites = build_sites(config)

    fresh = non_member_splits(config, 150)

    assert {s: len(split) for s, split in fresh.items()} == {"s1": 150, "s2": 150, "s3": 150}
    for data in sites:
        members = data.train.inputs.reshape(len(data.train), -1)
        outsiders = fresh[data.site_id].inputs.reshape(150, -1)
        assert not (members[:, None, :] == outsiders[None, :, :]).all(axis=2).any()
    # The same prevalence: s3's hospital is 60% positive, s2's 40%.
    assert fresh["s3"].targets.mean() > fresh["s2"].targets.mean() + 0.05


def _audit(config, task, weights, references=()):
    sites = build_sites(config)
    members = {d.site_id: d.train for d in sites}
    return membership_audit(config, task, {d.site_id: weights for d in sites}, members,
                            non_member_splits(config, 200), list(references))  # fmt: skip


def test_an_overfit_model_leaks_membership_and_an_untrained_one_does_not():
    config = JobConfig.model_validate(tiny_job(task={"channels": [16, 32]}))
    sites = build_sites(config)
    task = build_task(config, sites)
    pooled = concat_splits([d.train for d in sites])
    fit = FitConfig(epochs=30, batch_size=8, lr=0.01, momentum=0.9)  # train loss -> 0.004

    def trained(split, seed):
        import torch

        torch.manual_seed(seed)
        model = task.build_model()
        train_epochs(task, model, split, fit, seed)
        return {k: v.copy() for k, v in model_weights(model).items()}

    import torch

    torch.manual_seed(0)
    untrained = {k: v.copy() for k, v in model_weights(task.build_model()).items()}
    overfit = trained(pooled, 1)
    # References: the same recipe on fresh scans (another draw of the same hospitals), as the audit trains them.
    reference_pool = concat_splits(list(non_member_splits(config.model_copy(update={"seed": 99}), 100).values()))
    references = [{d.site_id: w for d in sites} for w in (trained(reference_pool.subset(np.arange(54)), 2),)]

    leaky, blank = _audit(config, task, overfit, references), _audit(config, task, untrained, references)

    assert leaky["attacks"]["loss"]["auc"] > blank["attacks"]["loss"]["auc"] + 0.2
    assert leaky["attacks"]["reference"]["auc"] > blank["attacks"]["reference"]["auc"] + 0.2
    assert abs(blank["attacks"]["loss"]["auc"] - 0.5) < 0.15  # a model that saw nothing: near chance
    assert leaky["membership"]["members"] == 54 and leaky["membership"]["non_members"] == 600
    assert set(leaky["sites"]) == {"s1", "s2", "s3"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = JobConfig.model_validate(tiny_job(train={"rounds": 3}))
    MethodRun(config, "fedavg", out, build_sites(config)).run()
    return out


def test_the_cli_writes_audit_json_with_the_interface_keys_and_the_picture(tiny_run):
    result = CliRunner().invoke(app, ["audit", str(tiny_run), "--references", "1", "--non-members", "100",
                                      "--iterations", "30"])  # fmt: skip

    assert result.exit_code == 0, result.output
    audit = json.loads((tiny_run / "audit.json").read_text())
    for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
        assert 0.0 <= audit["membership"][key] <= 1.0
        assert key in audit["attacks"]["loss"] and key in audit["attacks"]["reference"]
        assert key in audit["sites"]["s2"]["reference"]
    assert audit["membership"]["non_members"] == 300 and audit["membership"]["members"] == 54
    assert {"psnr", "ssim"} <= set(audit["inversion"]["no_dp"])
    assert audit["inversion"]["dp"]["noise_multiplier"] > 0 and audit["inversion"]["dp"]["epsilon"] == 8.0
    assert (tiny_run / audit["inversion"]["picture"]).stat().st_size > 1000
    assert "pooled" in result.output and "TPR@0.1%" in result.output


def test_the_cli_refuses_a_folder_without_a_model_in_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_job()))

    result = CliRunner().invoke(app, ["audit", str(tmp_path)])

    assert result.exit_code == 2
    assert "model.safetensors: not found" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_cli_refuses_a_job_on_real_data_naming_its_config(tiny_run, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((tiny_run / "model.safetensors").read_bytes())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "sites", "sites": ["a.yaml"]}}))

    result = CliRunner().invoke(app, ["audit", str(tmp_path)])

    assert result.exit_code == 2
    assert "config.yaml: data.source 'sites'" in result.output and "cannot be regenerated" in result.output


def test_the_report_section_renders_each_site_and_the_pooled_row_from_audit_json(tiny_run):
    from fedrad.report.sections import leakage_audit

    if not (tiny_run / "audit.json").exists():
        CliRunner().invoke(app, ["audit", str(tiny_run), "--references", "1", "--non-members", "100",
                                 "--iterations", "10"])  # fmt: skip
    audit = json.loads((tiny_run / "audit.json").read_text())

    membership, inversion = leakage_audit(audit)

    assert [r[0] for r in membership[3]] == ["s1", "s2", "s3", "pooled"]
    assert membership[3][-1][3] == f"{audit['attacks']['loss']['auc']:.3f}"
    assert membership[3][-1][1:3] == ["54", "300"]
    assert inversion[3][0][1] == f"{audit['inversion']['no_dp']['psnr']:.3f}" and "audit_inversion.png" in inversion[1]


def test_a_compared_methods_audit_appears_in_the_comparison_report(tiny_run, tmp_path):
    from fedrad.report.comparison import write_comparison

    if not (tiny_run / "audit.json").exists():
        CliRunner().invoke(app, ["audit", str(tiny_run), "--references", "1", "--non-members", "100",
                                 "--iterations", "10"])  # fmt: skip
    summary = json.loads((tiny_run / "summary.json").read_text())
    (tmp_path / "fedavg").mkdir()
    (tmp_path / "fedavg" / "audit.json").write_text((tiny_run / "audit.json").read_text())

    markdown = write_comparison(tmp_path, [summary])

    assert f"## Leakage audit: membership inference ({summary['method']})" in markdown
    assert "Leakage audit: gradient inversion" in (tmp_path / "report.html").read_text()
    assert "audit" not in json.loads((tmp_path / "comparison.json").read_text())[0]  # the summaries as run
