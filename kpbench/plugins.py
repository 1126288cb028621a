"""Plugin manager: every plugin, built-in or third-party, arrives through the ``kpbench``
entry-point group. ``KPBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` loads only kpbench's own entry points;
``--plugin MODULE`` (or ``KPBENCH_PLUGINS=mod1,mod2``) loads named modules explicitly.

A plugin that fails to import, or whose hook raises, is reported (one line naming it) and skipped;
the other plugins keep working. An explicitly requested module that fails is an error.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from kpbench import hookspecs
from kpbench.errors import KpbenchError
from kpbench.keypoints import register_schema
from kpbench.log import log
from kpbench.registry import KINDS, Registry

GROUP = "kpbench"
BUILTIN_DIST = "kpbench"
AUTOLOAD_SWITCH = "KPBENCH_DISABLE_PLUGIN_AUTOLOAD"
# kpbench's own entry points that give models and nothing else, and import PyTorch: loaded when the
# models are first asked for, so that a command without a PyTorch model (``kpbench predict`` on an
# exported graph, the shipped one included) starts without importing torch (1-2 s on 2 cores).
DEFERRED = frozenset({"kpbench-models", "kpbench-dlib", "kpbench-mediapipe"})
DEFERRED_KIND = "model"


@dataclass
class PluginFailure:
    name: str
    target: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.target}) failed to load: {self.error}"


class Plugins:
    """The loaded plugins and one :class:`Registry` per component kind."""

    def __init__(self, extra_modules: tuple[str, ...] = ()):
        self.extra_modules = tuple(extra_modules)  # what a Ray worker loads again
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.builtin: set[str] = set()  # kpbench's own plugins: their names win a clash
        self._deferred: list = []  # DEFERRED entry points, until the models are asked for
        self._load_entry_points()
        env_modules = tuple(m for m in os.environ.get("KPBENCH_PLUGINS", "").split(",") if m.strip())
        for mod in (*extra_modules, *env_modules):
            self._load_module(mod.strip())
        self._registries = {kind: Registry(kind) for kind in KINDS}
        self._models_collected = False
        for kind in KINDS:
            if kind != DEFERRED_KIND:
                self._collect(kind)
        for spec in self._registries["schema"].list():  # get_schema/convert know every registered layout
            try:
                register_schema(spec)
            except Exception as exc:  # noqa: BLE001 - one broken schema must not take down every command
                self.failures.append(PluginFailure(spec.plugin, f"schema {spec.name!r}", f"{type(exc).__name__}: {exc}"))
        self._warn(self.failures)

    @staticmethod
    def _warn(failures: list[PluginFailure]) -> None:
        for failure in failures:
            log.warning(f"kpbench: warning: {failure}")

    @property
    def registries(self) -> dict[str, Registry]:
        """One :class:`Registry` per kind (the models' collected first if they were not yet)."""
        self._collect_models()
        return self._registries

    def _collect_models(self) -> None:
        """Load the DEFERRED entry points and collect every plugin's models, once."""
        if self._models_collected:
            return
        self._models_collected = True
        before = len(self.failures)
        for ep in self._deferred:
            self._load_entry_point(ep, BUILTIN_DIST)
        self._collect(DEFERRED_KIND)
        self._warn(self.failures[before:])

    def _load_entry_points(self) -> None:
        disabled = os.environ.get(AUTOLOAD_SWITCH, "").strip() not in ("", "0")
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            dist = (ep.dist.name if ep.dist else "").lower()
            if disabled and dist != BUILTIN_DIST:
                continue
            if dist == BUILTIN_DIST and ep.name in DEFERRED:
                if all(d.name != ep.name for d in self._deferred):
                    self._deferred.append(ep)
                continue
            self._load_entry_point(ep, dist)

    def _load_entry_point(self, ep, dist: str) -> None:
        if self.pm.has_plugin(ep.name):
            return  # the same distribution seen twice on sys.path
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import error must not take down the others
            self.failures.append(PluginFailure(ep.name, ep.value, f"{type(exc).__name__}: {exc}"))
            return
        if self.pm.is_registered(module):
            return  # loaded by name already (-p, KPBENCH_PLUGINS) before its deferred load
        self.pm.register(module, name=ep.name)
        if dist == BUILTIN_DIST:
            self.builtin.add(ep.name)
        log.debug(f"plugin {ep.name!r} loaded from {ep.value} ({dist or 'no distribution'})")

    def _load_module(self, modname: str) -> None:
        try:
            module = importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001
            raise KpbenchError(f"plugin module {modname!r} failed to import: {type(exc).__name__}: {exc}") from exc
        if not self.pm.is_registered(module):
            self.pm.register(module, name=modname)

    def _collect(self, kind: str) -> None:
        hook = getattr(self.pm.hook, f"kpbench_{kind}s")
        for impl in sorted(hook.get_hookimpls(), key=lambda i: i.plugin_name not in self.builtin):
            try:
                specs = impl.function() or []
            except Exception as exc:  # noqa: BLE001
                self.failures.append(
                    PluginFailure(impl.plugin_name, f"kpbench_{kind}s hook", f"{type(exc).__name__}: {exc}")
                )
                continue
            for spec in specs:
                try:
                    self._registries[kind].add(spec, impl.plugin_name)
                except KpbenchError as exc:  # a name registered twice, a wrong type: that spec is left out
                    self.failures.append(PluginFailure(impl.plugin_name, f"kpbench_{kind}s hook", str(exc)))

    def __getattr__(self, attr: str) -> Registry:
        # plugins.models, plugins.datasets, plugins.detectors, plugins.metrics, plugins.schemas
        if attr.endswith("s") and attr[:-1] in KINDS:
            if attr[:-1] == DEFERRED_KIND:
                self._collect_models()
            return self._registries[attr[:-1]]
        raise AttributeError(attr)


_CACHE: dict[tuple[str, ...], Plugins] = {}


def get_plugins(extra_modules: tuple[str, ...] = (), fresh: bool = False) -> Plugins:
    key = tuple(extra_modules) + (os.environ.get(AUTOLOAD_SWITCH, ""), os.environ.get("KPBENCH_PLUGINS", ""))
    if fresh or key not in _CACHE:
        _CACHE[key] = Plugins(tuple(extra_modules))
    return _CACHE[key]
