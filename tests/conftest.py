"""Test-wide settings: offline, no telemetry, small thread pools on a 2-core machine."""

from __future__ import annotations

import os
import tempfile

for _key, _value in (("DO_NOT_TRACK", "1"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("HF_HUB_OFFLINE", "1"),
                     ("PREFECT_SERVER_ANALYTICS_ENABLED", "false")):
    os.environ.setdefault(_key, _value)
# Decoded splits (lofiseg/data/decode_cache.py) outside the working tree; content-keyed, so sessions may share it.
os.environ.setdefault("LOFISEG_DECODE_CACHE", os.path.join(tempfile.gettempdir(), "lofiseg-test-decoded"))

import torch  # noqa: E402

# Test tensors are tiny: a second thread only adds synchronisation cost on a 2-core machine.
torch.set_num_threads(1)
