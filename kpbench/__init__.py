"""kpbench: train, evaluate and compare facial keypoint detection models side by side."""

__version__ = "0.1.0"

import pluggy

hookimpl = pluggy.HookimplMarker("kpbench")
"""Decorator for plugin hook implementations: ``@kpbench.hookimpl``."""

from kpbench.errors import KpbenchError  # noqa: E402
from kpbench.keypoints import Schema, get_schema  # noqa: E402
from kpbench.registry import (DatasetSpec, DetectorSpec, MetricSpec, ModelSpec, ReportWriterSpec,  # noqa: E402
                              SchemaSpec)
from kpbench.data import Sample  # noqa: E402
from kpbench.protocols import MetricContext  # noqa: E402
from kpbench.faces import FaceDetector, RawFace  # noqa: E402
from kpbench import keypoints, protocols  # noqa: E402


def _plugin_schemas() -> None:
    """Load the plugins, so that :func:`get_schema` knows the layouts they register."""
    from kpbench.plugins import get_plugins

    get_plugins()


keypoints.SCHEMA_SOURCES.append(_plugin_schemas)

__all__ = [
    "__version__",
    "hookimpl",
    "KpbenchError",
    "Schema",
    "get_schema",
    "DatasetSpec",
    "DetectorSpec",
    "MetricSpec",
    "ModelSpec",
    "ReportWriterSpec",
    "SchemaSpec",
    "Sample",
    "MetricContext",
    "protocols",
    "FaceDetector",
    "RawFace",
    "Predictor",
    "Face",
]


def __getattr__(name):  # the photo path's API loads the model stack only when asked for
    if name in ("Predictor", "Face"):
        from kpbench import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'kpbench' has no attribute {name!r}")
