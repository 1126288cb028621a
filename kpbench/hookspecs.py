"""The whole plugin contract: six hooks, each returning a list of specs.

A plugin is a module (or object) with functions decorated by ``kpbench.hookimpl`` whose names are
the hooks below. Register it under the ``kpbench`` entry-point group of your package::

    [project.entry-points.kpbench]
    myplugin = "my_package.kpbench_plugin"

Every spec's ``name`` must be unique across all plugins of its kind.
"""

import pluggy

hookspec = pluggy.HookspecMarker("kpbench")


@hookspec
def kpbench_models():
    """Return a list of :class:`kpbench.ModelSpec` (trainable or fixed keypoint models)."""


@hookspec
def kpbench_datasets():
    """Return a list of :class:`kpbench.DatasetSpec` (sources of annotated face images)."""


@hookspec
def kpbench_detectors():
    """Return a list of :class:`kpbench.DetectorSpec` (face box finders)."""


@hookspec
def kpbench_metrics():
    """Return a list of :class:`kpbench.MetricSpec` (per-image error measures)."""


@hookspec
def kpbench_schemas():
    """Return a list of :class:`kpbench.SchemaSpec` (keypoint layouts and mappings between them)."""


@hookspec
def kpbench_report_writers():
    """Return a list of :class:`kpbench.ReportWriterSpec` (report formats written into a run folder)."""
