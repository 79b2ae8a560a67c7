"""Prefect flows that run the DVC stages."""

import os

# Nothing in a stage may wait on a network it cannot reach: telemetry and hub look-ups off.
for _key, _value in (("DO_NOT_TRACK", "1"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)
