"""lofiseg.track (store, tracker, models) against a real MLflow with a sqlite store in a temporary folder (one DB per module)."""

from __future__ import annotations

import ast
import http.server
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lofiseg.track import models as track_models
from lofiseg.track import store as track_store
from lofiseg.track.store import TrackingUnavailable
from lofiseg.track.tracker import Tracker


@pytest.fixture(scope="module", autouse=True)
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A sqlite store created once (MLflow's migrations take a few seconds) and shared by the module.

    It is also MLFLOW_TRACKING_URI meanwhile, so nothing can fall back to a mlflow.db in the cwd.
    """
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    track_store.check_store(uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield {"uri": uri, "artifact_root": (root / "mlartifacts").as_uri()}


@pytest.fixture(scope="module")
def client(store: dict[str, str]):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store["uri"])


def closed_port_uri() -> str:
    with socket.socket() as sock:  # bind, read the port, close: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --- store location -----------------------------------------------------------------------------------------

def test_default_uris_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ARTIFACT_ROOT", raising=False)
    assert track_store.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert track_store.default_artifact_root(tmp_path) == f"file://{tmp_path.resolve()}/mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", "s3://bucket/mlflow")
    assert track_store.default_tracking_uri(tmp_path) == "http://tracker:5000"
    assert track_store.default_artifact_root(tmp_path) == "s3://bucket/mlflow"


def test_sqlite_store_is_created_once_then_reused(store) -> None:
    db = Path(store["uri"][len("sqlite:///"):])
    assert track_store.sqlite_has_schema(db)  # created by the fixture; now checked without the file lock
    track_store.check_store(store["uri"])
    assert not track_store.sqlite_has_schema(db.with_name("absent.db"))


def test_sqlite_store_in_uncreatable_folder_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"
    with pytest.raises(TrackingUnavailable, match="MLFLOW_TRACKING_URI") as caught:
        track_store.check_store(uri)
    assert uri in str(caught.value) and "tracking.required: false" in str(caught.value)
    with pytest.raises(TrackingUnavailable, match="in-memory"):
        track_store.check_store("sqlite://")


def test_unreachable_http_store_fails_fast_naming_the_uri() -> None:
    uri = closed_port_uri()
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        with Tracker("exp", "run", uri=uri, timeout_s=2.0):
            pytest.fail("the body must not run without a store")
    assert time.monotonic() - start < 10.0
    message = str(caught.value)
    assert uri in message and "MLFLOW_TRACKING_URI" in message and "tracking.required: false" in message


class FlakyServer(http.server.BaseHTTPRequestHandler):
    """Answers /health, but the MLflow API fails (HTTP 503) or, with mode "hang", answers too late."""

    mode = "fail"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/health" and self.mode == "hang":
            time.sleep(3.0)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("mode, reason", [("fail", "503"), ("hang", "no answer within 1 s")])
def test_http_store_whose_api_fails_or_hangs_is_unavailable_in_time(mode: str, reason: str) -> None:
    handler = type("Handler", (FlakyServer,), {"mode": mode})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=reason) as caught:
            track_store.check_store(uri, timeout_s=1.0)
        assert time.monotonic() - start < 2.5 and uri in str(caught.value)
        server.shutdown()


def test_unreachable_store_not_required_gives_a_noop_tracker_that_warns(caplog: pytest.LogCaptureFixture
                                                                        ) -> None:
    with caplog.at_level(logging.WARNING, logger="lofiseg.track.tracker"):
        with Tracker("exp", "run", uri=closed_port_uri(), required=False, timeout_s=2.0) as tracker:
            assert not tracker.active and tracker.run_id is None
            tracker.log_params({"a": 1})
            tracker.log_metrics({"loss": 0.5}, step=0)
            tracker.set_tags({"t": "v"})
            assert tracker.log_model(torch.nn.Conv2d(3, 2, 1), "model", torch.zeros(1, 3, 8, 8)) is None
    assert "training WITHOUT tracking" in caplog.text
    with caplog.at_level(logging.WARNING, logger="lofiseg.track.tracker"):
        with Tracker("exp", "run", uri="sqlite:///never/created.db", enabled=False) as tracker:
            assert not tracker.active
    assert not Path("never").exists()
    assert "tracking is disabled" in caplog.text


# --- a full run ---------------------------------------------------------------------------------------------

def test_run_logs_params_metrics_tags_artifacts_and_a_resizable_model(store, client, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    report = tmp_path / "summary.md"
    report.write_text("# summary\n")
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, kernel_size=1)
    with Tracker("saliency", "cas-0.5", tags={"channel": "2"}, **store) as tracker:
        assert tracker.active and tracker.run_id
        tracker.log_params({"seed": 0, "train": {"lr": 0.1, "epochs": 2, "loss": "cas"}})
        tracker.log_metrics({"train.loss": torch.tensor(0.75), "val": {"mae": np.float32(0.25)}}, step=0)
        tracker.log_metrics({"train.loss": 0.5, "val.mae": 0.125}, step=1)
        tracker.set_tags({"dvc.data/raw": "abc.dir"})
        tracker.log_artifact(report, subdir="reports")
        figure, axis = plt.subplots(figsize=(2, 2))
        axis.plot([0, 1], [0.75, 0.5])
        tracker.log_figure(figure, "plots/loss.png")
        plt.close(figure)
        tracker.log_image(np.zeros((8, 8, 3), np.uint8), "plots/grid.png")
        tracker.log_dict({"epochs": 2}, "reports/summary.json")
        model_uri = tracker.log_model(model, "model", np.zeros((1, 3, 16, 16), np.float32),
                                      pip_requirements=["torch"])
        run_id = tracker.run_id
    assert not tracker.active and tracker.run_id == run_id

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "cas-0.5"
    assert run.data.params == {"seed": "0", "train.lr": "0.1", "train.epochs": "2", "train.loss": "cas"}
    assert steps(client, run_id, "train.loss") == [(0, 0.75), (1, 0.5)]
    assert steps(client, run_id, "val.mae") == [(0, 0.25), (1, 0.125)]  # nested key flattened with a dot
    assert run.data.tags["channel"] == "2" and run.data.tags["dvc.data/raw"] == "abc.dir"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == store["artifact_root"] + "/saliency"
    assert {a.path for a in client.list_artifacts(run_id, "reports")} == {"reports/summary.md",
                                                                          "reports/summary.json"}
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/loss.png", "plots/grid.png"}

    # The signature leaves batch, H and W free: (-1, 3, -1, -1) -> (-1, 2, -1, -1).
    with track_store.tracking_uri_set(store["uri"]):
        signature = mlflow.models.get_model_info(model_uri).signature
    assert signature.inputs.inputs[0].shape == (-1, 3, -1, -1)
    assert signature.outputs.inputs[0].shape == (-1, 2, -1, -1)
    loaded = track_models.load_model(model_uri, tracking_uri=store["uri"])
    other = torch.rand(3, 3, 8, 12)  # batch 3 and 8x12, unlike the 1x16x16 example
    with torch.no_grad():
        assert torch.allclose(loaded(other), model(other))
    with track_store.tracking_uri_set(store["uri"]):  # the pyfunc flavour enforces the signature
        predicted = mlflow.pyfunc.load_model(model_uri).predict(other.numpy())
    np.testing.assert_allclose(predicted, model(other).detach().numpy(), rtol=1e-6)


def test_resume_continues_the_same_run_without_duplicating_epochs(store, client) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker("resume", "run", **store) as first:
            first.log_params({"lr": 0.1})
            first.log_metrics({"loss": 1.0}, step=0)
            first.log_metrics({"loss": 0.5}, step=1)
            raise RuntimeError("boom")  # the process dies after epoch 1 was logged
    run_id = first.run_id
    assert client.get_run(run_id).info.status == "FAILED"
    assert client.get_run(run_id).data.tags["lofiseg.error"] == "RuntimeError: boom"

    with Tracker("resume", "ignored-name", run_id=run_id, tags={"resumed": 1}, **store) as resumed:
        assert resumed.run_id == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        resumed.log_params({"lr": 0.1})  # same value: accepted, nothing re-logged
        with pytest.raises(ValueError, match=r"lr: logged '0.1', now '0.2'"):
            resumed.log_params({"lr": 0.2})
        resumed.log_metrics({"loss": 0.6}, step=1)  # epoch 1 again (checkpoint older than the log): skipped
        resumed.log_metrics({"loss": 0.25}, step=2)
    assert steps(client, run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags["resumed"] == "1"
    experiment = client.get_experiment_by_name("resume")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_interrupt_ends_killed_and_unknown_run_id_is_refused(store, client) -> None:
    with pytest.raises(KeyboardInterrupt):
        with Tracker("interrupt", "run", **store) as tracker:
            raise KeyboardInterrupt
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    with pytest.raises(ValueError, match="run_id: MLflow run '0123456789abcdef' .* is not in the store"):
        with Tracker("interrupt", "run", run_id="0123456789abcdef", **store):
            pass


def test_bad_input_is_refused(store) -> None:
    tracker = Tracker("bad-input", "run", **store)
    with pytest.raises(RuntimeError, match="inside `with Tracker"):
        tracker.log_metrics({"loss": 1.0}, step=0)
    with tracker:
        with pytest.raises(ValueError, match="step: expected a non-negative int"):
            tracker.log_metrics({"loss": 1.0}, step=-1)
        with pytest.raises(TypeError, match=r"metrics\['loss'\]: expected a real number"):
            tracker.log_metrics({"loss": torch.ones(2)}, step=0)
        with pytest.raises(ValueError, match=r"example_input: expected a floating \(N, C, H, W\) batch, got "
                                             r"shape \(3, 8, 8\)"):
            tracker.log_model(torch.nn.Conv2d(3, 2, 1), "model", torch.zeros(3, 8, 8))
        with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
            tracker.log_model("not a model", "model", torch.zeros(1, 3, 8, 8))  # type: ignore[arg-type]
        with pytest.raises(FileNotFoundError, match="does not exist"):
            tracker.log_artifact("no/such/file.txt")
    with pytest.raises(ValueError, match="experiment: expected a non-empty string"):
        Tracker("", "run", **store)


def test_default_pip_requirements_pin_torch_and_cloudpickle() -> None:
    from importlib import metadata

    requirements = track_models.default_pip_requirements(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)))
    assert requirements == sorted([f"cloudpickle=={metadata.version('cloudpickle')}",
                                   f"torch=={torch.__version__.split('+')[0]}"])
    # A class from another installed package (numpy's name stands in for smp/timm) gets pinned too.
    foreign = type("Foreign", (torch.nn.Identity,), {"__module__": "numpy.fake"})
    assert f"numpy=={np.__version__}" in track_models.default_pip_requirements(torch.nn.Sequential(foreign()))


# --- where mlflow is imported -------------------------------------------------------------------------------

LOFISEG = Path(__file__).resolve().parent.parent / "lofiseg"


def imports_mlflow(path: Path) -> bool:
    """Whether a module has an ``import mlflow...`` or ``from mlflow... import`` anywhere, lazy ones included."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
            return True
    return False


def test_only_the_track_package_imports_mlflow() -> None:
    offenders = sorted(path.relative_to(LOFISEG.parent).as_posix() for path in LOFISEG.rglob("*.py")
                       if LOFISEG / "track" not in path.parents and imports_mlflow(path))
    assert offenders == []
    assert imports_mlflow(LOFISEG / "track" / "store.py")  # the walk does see the lazy imports


def test_importing_the_tracker_does_not_import_mlflow() -> None:
    """Stages that do not track must not pay for importing mlflow."""
    code = ("import sys, lofiseg.track, lofiseg.track.tracker, lofiseg.track.registry, lofiseg.provenance; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=LOFISEG.parent)
    assert done.stdout.strip() == "[]"


def test_an_evaluate_stage_logs_finite_metrics_and_its_files_in_one_run(tmp_path, monkeypatch, client) -> None:
    """stages.cli.tracked_evaluation: one run per evaluate stage, metrics under the task (NaN left out: MLflow
    compares runs by them), files under the task's folder, a report subfolder kept."""
    from lofiseg.config import load_params
    from stages.cli import tracked_evaluation

    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"experiment_prefix": "evalstage"})})
    monkeypatch.chdir(tmp_path)
    report = Path("reports/regions")
    (report / "plots").mkdir(parents=True)

    def evaluate() -> tuple[dict, list[Path]]:
        files = [report / "table.md", report / "plots" / "curve.csv"]
        for file in files:
            file.write_text("x")
        return {"cas": {"covering": 0.5, "vi": float("nan"), "name": "cas"}}, files

    metrics = tracked_evaluation(params, "evaluate_regions", [Path("data/raw")], "regions", report, evaluate)
    assert metrics["cas"]["covering"] == 0.5
    experiment = client.get_experiment_by_name("evalstage-evaluation")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "evaluate_regions" and run.data.tags["lofiseg.stage"] == "evaluate_regions"
    assert run.data.metrics == {"regions.cas.covering": 0.5}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "regions")] == ["regions/plots", "regions/table.md"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "regions/plots")] == ["regions/plots/curve.csv"]
