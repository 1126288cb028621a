"""kpbench's built-in plugins, installed as the ``kpbench_plugins`` package and registered through
the ``kpbench`` entry-point group exactly as a third-party plugin would be."""
