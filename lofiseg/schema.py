"""Base for the typed params schema: unknown keys are errors, values are validated, objects are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A params section: unknown keys, wrong types and out-of-range values are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)
