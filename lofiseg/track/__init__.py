"""Experiment tracking and the model registry in MLflow; the only package of lofiseg that imports mlflow.

One job per module: :mod:`~lofiseg.track.store` (where the store lives, fail-fast checks, the lazy mlflow import),
:mod:`~lofiseg.track.tracker` (one run: :class:`~lofiseg.track.tracker.Tracker`), :mod:`~lofiseg.track.models`
(signature, pip requirements, loading a logged model), :mod:`~lofiseg.track.runs` (reading runs back),
:mod:`~lofiseg.track.registry` (register, gate, promote) and :mod:`~lofiseg.track.comparison` (side-by-side
reports). Nothing here imports mlflow at import time: a stage that does not track never pays for it.
"""
