"""The `retrain` deployment: prefect.yaml agrees with params.yaml, and `prefect deploy` registers it on the
`gpu` work pool with its weekly cron, against a real (temporary) Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lofiseg.config import load_params
from tests.pipeline_repo import PROJECT

pytestmark = pytest.mark.slow


def deployment(name: str) -> dict:
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    return next(d for d in spec["deployments"] if d["name"] == name)


def test_prefect_yaml_matches_params_and_entrypoints_are_flows():
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    params = load_params(PROJECT / "params.yaml")
    weekly = deployment("retrain-weekly")
    assert weekly["schedules"] == [{"cron": params.retrain.cron, "timezone": params.retrain.timezone, "active": True}]
    assert weekly["work_pool"]["name"] == params.retrain.work_pool
    for name in ("retrain-weekly", "pipeline"):
        entry = deployment(name)["entrypoint"]
        assert isinstance(load_flow_from_entrypoint(str(PROJECT / entry)), Flow), entry


def test_prefect_deploy_registers_the_weekly_retrain_on_the_gpu_pool(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "DO_NOT_TRACK": "1",
               "LOFISEG_GIT_URL": "https://git.example.invalid/lofiseg.git"}
        prefect = [str(Path(sys.executable).with_name("prefect"))]

        def cli(*args: str) -> str:
            proc = subprocess.run(prefect + list(args), cwd=PROJECT, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            return proc.stdout

        cli("work-pool", "create", "gpu", "--type", "process")
        cli("--no-prompt", "deploy", "--name", "retrain-weekly")

        async def read() -> tuple:
            async with get_client() as client:
                found = await client.read_deployment_by_name("lofiseg-retrain/retrain-weekly")
                return found, await client.read_deployment_schedules(found.id)

        import asyncio

        found, schedules = asyncio.run(read())
        assert found.work_pool_name == "gpu" and found.entrypoint == "flows/retrain.py:retrain"
        assert [(s.schedule.cron, s.schedule.timezone) for s in schedules] == [("0 3 * * 1", "UTC")]
        assert found.job_variables["env"]["LOFISEG_DEVICE"] == "cuda"
        steps = found.pull_steps
        assert steps[0]["prefect.deployments.steps.git_clone"]["repository"] == env["LOFISEG_GIT_URL"]
