"""Experiment tracking in MLflow: one :class:`Tracker` per training (or evaluation) run.

A stage opens one :class:`Tracker` per run. It logs params, per-epoch metrics (``step=epoch``), tags
(git commit, DVC hashes of the inputs: :func:`lofiseg.provenance.standard_tags`, the chosen channel...), plots and
the model with a signature whose batch/H/W are free (-1). The store is checked before any work
(:mod:`lofiseg.track.store`): an unreachable store fails fast with a message saying how to fix it, or, when the
stage's params allow it (``tracking.required: false``), training goes on WITHOUT tracking and says so loudly. A
run is never silently lost: an exception ends it FAILED, Ctrl-C KILLED, and after ``kill -9`` the run id kept
in the training checkpoint resumes the very same run. mlflow and torch are imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from lofiseg.track.models import (
    SERVED_ARTIFACT,
    SERVED_MODEL_CODE,
    default_pip_requirements,
    eval_output,
    example_tensor,
    segmentation_signature,
    served_pip_requirements,
    served_signature,
)
from lofiseg.track.store import (
    TrackingUnavailable,
    artifact_root_for,
    check_artifact_store,
    check_store,
    default_tracking_uri,
    import_mlflow,
    mlflow_client,
    tracking_uri_set,
)
from lofiseg.track.values import as_float, check_name, flatten

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def _final_status(exc: BaseException | None) -> str:
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"



# --- the run ------------------------------------------------------------------------------------------------

class Tracker:
    """One MLflow run as a context manager; a no-op (``active`` False) when tracking is off or unavailable.

    ``with Tracker("saliency", "cas-0.5", run_id=checkpoint.get("run_id")) as tracker:`` checks the store,
    creates the experiment (artifact location ``<artifact_root>/<experiment>``) if missing, then starts a run,
    or resumes ``run_id``. Each (metric, step) is logged at most once per run, so a resumed loop never
    duplicates an epoch. On exit the run ends FINISHED, FAILED (exception) or KILLED (KeyboardInterrupt).
    """

    def __init__(self, experiment: str, run_name: str, *, uri: str | None = None,
                 artifact_root: str | None = None, enabled: bool = True, required: bool = True,
                 run_id: str | None = None, tags: Mapping[str, Any] | None = None,
                 timeout_s: float = 5.0) -> None:
        self.experiment = check_name("experiment", experiment)
        self.run_name = check_name("run_name", run_name)
        if run_id is not None:
            check_name("run_id", run_id)
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"tags: expected a mapping, got {type(tags).__name__}")
        self.uri = uri if uri is not None else default_tracking_uri(Path.cwd())
        self.artifact_root = artifact_root if artifact_root is not None else artifact_root_for(self.uri)
        self.enabled, self.required, self.timeout_s = enabled, required, timeout_s
        self._resume_id = run_id
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._state = "new"  # new -> tracking | untracked -> closed
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._stack: contextlib.ExitStack | None = None
        self._logged_steps: dict[str, set[int]] = {}

    @property
    def active(self) -> bool:
        """True while a run is open and being logged to."""
        return self._state == "tracking"

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (keep it in the checkpoint to resume); None when untracked."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    # -- lifecycle

    def __enter__(self) -> Tracker:
        if self._state != "new":
            raise RuntimeError(f"Tracker: each Tracker opens one run; this one is already {self._state}")
        if not self.enabled:
            return self._untracked("tracking is disabled (enabled=False)")
        try:
            check_store(self.uri, self.timeout_s)
            check_artifact_store(self._artifact_location(), self.timeout_s)
        except TrackingUnavailable as err:
            if self.required:
                raise
            return self._untracked(str(err))
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(tracking_uri_set(self.uri))
            self._open_run(mlflow_client(self.uri))
        except BaseException:
            stack.close()
            raise
        self._stack, self._state = stack, "tracking"
        log.info("MLflow run %s (%s) in experiment %r at %s", self._run_id, self.run_name, self.experiment,
                 self.uri)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._state != "tracking":
            self._state = "closed"
            return
        status = _final_status(exc)
        assert self._stack is not None and self._run_id is not None
        try:
            mlflow = import_mlflow()
            if status != "FINISHED" and exc is not None:
                self._client.set_tag(self._run_id, "lofiseg.error", f"{type(exc).__name__}: {exc}"[:5000])
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self._run_id:
                mlflow.end_run(status)
            else:
                self._client.set_terminated(self._run_id, status)
        except Exception as err:
            if exc is None:
                raise TrackingUnavailable(f"could not end MLflow run {self._run_id} at {self.uri!r} as "
                                          f"{status}: {err}") from err
            log.error("could not mark MLflow run %s as %s: %s", self._run_id, status, err)
        finally:
            self._stack.close()
            self._stack, self._state = None, "closed"

    def _untracked(self, reason: str) -> Tracker:
        log.warning("training WITHOUT tracking: %s", reason)
        self._state = "untracked"
        return self

    @property
    def _client(self) -> MlflowClient:
        return mlflow_client(self.uri)

    def _artifact_location(self) -> str | None:
        """Where this run's artifacts will go: the experiment's location, or the one it will be created with."""
        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.artifact_location
        if self.artifact_root is None:
            return None
        return f"{self.artifact_root.rstrip('/')}/{_safe_name(self.experiment)}"

    def _experiment(self, client: MlflowClient) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = None
            if self.artifact_root is not None:
                location = f"{self.artifact_root.rstrip('/')}/{_safe_name(self.experiment)}"
            try:
                return client.create_experiment(self.experiment, artifact_location=location)
            except Exception:  # another stage created it meanwhile
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            log.warning("restoring deleted MLflow experiment %r (id %s)", self.experiment,
                        experiment.experiment_id)
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _open_run(self, client: MlflowClient) -> None:
        mlflow = import_mlflow()
        self._experiment_id = self._experiment(client)
        if self._resume_id is None:
            run = mlflow.start_run(experiment_id=self._experiment_id, run_name=self.run_name, tags=self._tags)
            self._run_id = run.info.run_id
            return
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(self._resume_id)
        except MlflowException as err:
            raise ValueError(f"run_id: MLflow run {self._resume_id!r} (from the checkpoint) is not in the "
                             f"store {self.uri!r}; use the store it was logged to (MLFLOW_TRACKING_URI) or "
                             f"delete the checkpoint to start a new run") from err
        if run.info.experiment_id != self._experiment_id or run.info.lifecycle_stage == "deleted":
            raise ValueError(f"run_id: MLflow run {self._resume_id!r} belongs to experiment id "
                             f"{run.info.experiment_id} ({run.info.lifecycle_stage}), expected an active run "
                             f"of experiment {self.experiment!r} (id {self._experiment_id})")
        from mlflow.entities import RunTag

        self._logged_steps = {key: {m.step for m in client.get_metric_history(self._resume_id, key)}
                              for key in run.data.metrics}
        if self._tags:
            client.log_batch(self._resume_id, tags=[RunTag(k, v) for k, v in self._tags.items()])
        mlflow.start_run(run_id=self._resume_id)  # last: nothing can fail after the run is RUNNING again
        self._run_id = self._resume_id
        log.info("resuming MLflow run %s; last steps already logged: %s", self._run_id,
                 {k: max(v) for k, v in self._logged_steps.items() if v})

    def _logging(self) -> bool:
        """True: log; False: untracked no-op; a Tracker used outside its ``with`` block raises."""
        if self._state == "tracking":
            return True
        if self._state == "untracked":
            return False
        raise RuntimeError(f"Tracker is {self._state}: log inside `with Tracker(...) as tracker:`")

    # -- logging

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log params, nested keys joined by dots and values stringified.

        Params already in the run with the same value are skipped (resume); a different value raises
        ValueError, since MLflow keeps one value per param.
        """
        flat = {key: str(value) for key, value in flatten(params, "params").items()}
        if not self._logging():
            return
        from mlflow.entities import Param

        logged = self._client.get_run(self._run_id).data.params
        conflicts = [f"{key}: logged {logged[key]!r}, now {value!r}" for key, value in flat.items()
                     if key in logged and logged[key] != value]
        if conflicts:
            raise ValueError(f"params: MLflow run {self._run_id} already holds other values for "
                             f"{'; '.join(conflicts)}. A resumed run must keep its params: restore them, or "
                             f"delete the checkpoint to start a new run")
        new = [Param(key, value) for key, value in flat.items() if key not in logged]
        if new:
            self._client.log_batch(self._run_id, params=new)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log metrics at ``step`` (the epoch); a (metric, step) pair already in the run is skipped."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step: expected a non-negative int (the epoch), got {step!r}")
        values = {key: as_float(key, value) for key, value in flatten(metrics, "metrics").items()}
        if not self._logging():
            return
        from mlflow.entities import Metric

        step, now = int(step), int(time.time() * 1000)
        fresh = [Metric(key, value, now, step) for key, value in values.items()
                 if step not in self._logged_steps.get(key, ())]
        if len(fresh) < len(values):
            log.info("step %d of %s already logged to run %s: skipped", step,
                     sorted(set(values) - {m.key for m in fresh}), self._run_id)
        if fresh:
            self._client.log_batch(self._run_id, metrics=fresh)
        for metric in fresh:
            self._logged_steps.setdefault(metric.key, set()).add(step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; values are stringified."""
        if not isinstance(tags, Mapping):
            raise TypeError(f"tags: expected a mapping, got {type(tags).__name__}")
        if not self._logging() or not tags:
            return
        from mlflow.entities import RunTag

        self._client.log_batch(self._run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        """Copy a file or a whole folder into the run's artifacts (under ``subdir`` if given)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path: artifact {path} does not exist")
        if self._logging():
            self._client.log_artifact(self._run_id, str(path), artifact_path=subdir)

    def log_figure(self, figure: Figure, name: str) -> None:
        """Save a matplotlib figure as artifact ``name``, format from its extension (``plots/loss.png``)."""
        check_name("name", name)
        if self._logging():
            self._client.log_figure(self._run_id, figure, name)

    def log_image(self, image: np.ndarray | torch.Tensor, name: str) -> None:
        """Save an (H, W) or (H, W, 1|3|4) image, uint8 or float in [0, 1], as artifact ``name`` (.png)."""
        check_name("name", name)
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image: expected shape (H, W) or (H, W, 1|3|4), got {array.shape}")
        if self._logging():
            self._client.log_image(self._run_id, array, artifact_file=name)

    def log_text(self, text: str, name: str) -> None:
        """Save ``text`` as artifact ``name`` (e.g. ``reports/summary.md``)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        check_name("name", name)
        if self._logging():
            self._client.log_text(self._run_id, text, name)

    def log_dict(self, values: Mapping[str, Any], name: str) -> None:
        """Save a mapping as artifact ``name`` (JSON, or YAML for .yml/.yaml)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a mapping, got {type(values).__name__}")
        check_name("name", name)
        if self._logging():
            self._client.log_dict(self._run_id, dict(values), name)

    def log_model(self, model: torch.nn.Module, name: str, example_input: np.ndarray | torch.Tensor,
                  pip_requirements: list[str] | None = None, *, step: int = 0,
                  save_example: bool = False) -> str | None:
        """Log ``model`` (pickle) with signature (N, C, H, W) -> (N, M, H, W), N/H/W free; return its URI
        (``models:/<model id>``).

        ``example_input`` (one (N, C, H, W) float batch) fixes C and, through one eval-mode forward pass, M;
        with ``save_example`` it is also stored in the model as its input example (what the registry shows).
        The pickle format keeps any input size (MLflow's default pt2 export would freeze it to the example's);
        loading needs the model's classes importable. ``pip_requirements`` default: torch, cloudpickle and the
        pinned distributions of the model's module classes (no slow inference). None when untracked.
        """
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        check_name("name", name)
        example = example_tensor(example_input)
        output = eval_output(model, example)
        if not self._logging():
            return None
        signature = segmentation_signature(example, output)
        requirements = pip_requirements if pip_requirements is not None else default_pip_requirements(model)
        info = import_mlflow().pytorch.log_model(model, name=name, signature=signature,
                                           serialization_format="pickle", pip_requirements=requirements,
                                           step=step, input_example=example.numpy() if save_example else None)
        return info.model_uri

    def log_served_model(self, segmenter: torch.jit.ScriptModule, name: str, example_images: np.ndarray, *,
                         step: int = 0) -> str | None:
        """Log a TorchScript :class:`~lofiseg.infer.served.ServedSegmenter` as a pyfunc model that loads and
        serves without lofiseg; return its URI (``models:/<model id>``), None when untracked.

        The model is :mod:`lofiseg.track.served_model` (models-from-code) with ``segmenter`` as its artifact,
        the signature images (N, H, W, 3) -> (N, H, W) with N, H, W free, ``example_images`` (uint8) as its
        input example, and pip requirements mlflow, numpy and torch pinned to the installed versions.
        """
        import tempfile

        import torch

        check_name("name", name)
        images = np.asarray(example_images)
        with torch.inference_mode():
            output = segmenter(torch.from_numpy(np.ascontiguousarray(images))).numpy()
        signature = served_signature(images, output)
        if not self._logging():
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "segmenter.pt"
            torch.jit.save(segmenter, str(path))
            info = import_mlflow().pyfunc.log_model(
                name=name, python_model=str(SERVED_MODEL_CODE), artifacts={SERVED_ARTIFACT: str(path)},
                signature=signature, input_example=images, pip_requirements=served_pip_requirements(), step=step)
        return info.model_uri
