"""Python values as MLflow wants them: non-empty names, flat params, float metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(values: Mapping[str, Any] | Any, argument: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (or pydantic models) to one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    if hasattr(values, "model_dump"):
        values = values.model_dump(mode="json")
    if not isinstance(values, Mapping):
        raise TypeError(f"{argument}: expected a mapping, got {type(values).__name__}")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "model_dump"):
            flat.update(flatten(value, argument, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def as_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"metrics[{key!r}]: expected a real number or a one-element tensor/array, got "
                        f"{type(value).__name__} {value!r}") from err


def check_name(argument: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{argument}: expected a non-empty string, got {name!r}")
    return name
