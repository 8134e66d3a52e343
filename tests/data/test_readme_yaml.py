"""The README's "Your own data" section must stay true: its site YAMLs and job line validate."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fedrad.config import JobConfig
from fedrad.data.readers.config import SOURCES, load_site_file

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_site_yaml_in_your_own_data_validates(tmp_path):
    section = _section("Your own data")
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)

    sources = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"site{i}.yaml"
        path.write_text(block)
        site = load_site_file(path)  # the real loader: raises SiteDataConfigError naming file and key
        sources.append(site.data.source)

    assert sorted(sources) == sorted(SOURCES)  # one minimal site YAML per data source, no more
    assert "fedrad data check site.yaml" in section
    assert "docs/data.md" in section


def test_the_job_line_on_harmonisation_validates():
    section = _section("Your own data")
    (line,) = re.findall(r"`(data: \{source: sites.*?)`", section)

    job = JobConfig.model_validate(yaml.safe_load(line))

    assert job.data.harmonize is not None and job.data.harmonize.spacing == (1.0, 1.0)
    assert job.data.sites and all(s.endswith("site.yaml") for s in map(str, job.data.sites))
