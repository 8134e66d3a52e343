"""`fedrad client`: a hospital's Site, built from its own copy of the job YAML and its own data YAML.

The client computes the job hash its admin approved from its own job file (and refuses any
other) and reads its own data; its own state (an ensemble member, FedBN's BatchNorm, SCAFFOLD's
c_i) lives in a state file beside the data YAML (fedrad.site.state), saved after every fit and
reloaded on restart. The network side is `fedrad.transport.grpc_client`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from fedrad.config import JobConfig
from fedrad.pki.kits import SiteKit
from fedrad.run.federation import job_harmonizer
from fedrad.run.serve import DeployError
from fedrad.run.simulate import build_sites, build_task
from fedrad.secagg.identity import Identity
from fedrad.site.handler import Site
from fedrad.site.state import SiteStateFile, default_state_path
from fedrad.yamlfile import read_yaml_mapping

log = logging.getLogger(__name__)


def client_site(config: JobConfig, kit: SiteKit, data_path: Path, state_path: Path | None = None) -> Site:
    """The hospital's Site: its data (phantom from the job, or its own readers) under the kit's name.

    Its state file is `state_path`, by default `<data YAML folder>/.fedrad-state/<site>-<job hash
    prefix>.safetensors` (fedrad.site.state.default_state_path); a state file there is read now.

    Data YAML: `data: {source: phantom, site_id: HOSPITAL}` picks one phantom hospital of the job,
    generated here with the job's seed; anything else is a site file for fedrad.data.readers.
    The job's `data.harmonize` is applied here exactly as the simulator applies it (the phantom
    hospitals come from `build_sites`, already harmonised); the job hash, which every instruction
    must carry, covers it, so a site cannot run other preprocessing.
    """
    block = read_yaml_mapping(Path(data_path), DeployError).get("data")
    if isinstance(block, dict) and block.get("source") == "phantom":
        wanted = str(block.get("site_id", kit.site_id))
        phantoms = {d.site_id: d for d in build_sites(config)}
        if wanted not in phantoms:
            raise DeployError(f"{data_path}: key 'data.site_id': {wanted!r} is not one of the job's {sorted(phantoms)}")
        data = phantoms[wanted]
    else:
        from fedrad.data.readers import load_site_data  # lazy: DICOM / NIfTI readers are heavy

        data, skipped = load_site_data(data_path, job_harmonizer(config))  # harmonised as read, real geometry
        if skipped:
            log.warning("%s: %d items skipped while reading", data_path, len(skipped))
    data = dataclasses.replace(data, site_id=kit.site_id)
    job_hash = config.job_hash()
    path = state_path or default_state_path(data_path, kit.site_id, job_hash)
    identity = Identity.from_pem(kit.site_id, kit.cert_pem, kit.key_pem, kit.ca_pem)  # signs its secagg keys
    return Site(data, build_task(config, [data]), job_hash, SiteStateFile(path, job_hash, kit.site_id),
                config.secure_aggregation.settings(), identity)
