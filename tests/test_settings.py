"""The typed settings: one declaration gives the YAML's keys, types, choices and defaults; a run's
settings are resolved once into a plan; the config dict stays at the edges."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from kpbench import KpbenchError
from kpbench import config as cfgmod
from kpbench.config import CHOICES, DEFAULTS, SCHEMA, Settings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def test_the_declaration_gives_types_choices_and_defaults():
    assert DEFAULTS == Settings().to_dict()
    assert SCHEMA["train"]["augment"]["prob"] is float and SCHEMA["run"]["threads"] == (int, type(None))
    assert CHOICES["train.loss"] == ("mse", "l1", "wing") and CHOICES["eval.onnx_latency"] == ("auto", False)
    with pytest.raises(KpbenchError, match=r"'train.loss' must be one of mse, l1, wing, got 'huber'"):
        Settings.from_dict({"train": {"loss": "huber"}})
    with pytest.raises(KpbenchError, match=r"unknown key 'train.lrr'; did you mean 'lr'\?"):
        Settings.from_dict({"train": {"lrr": 0.1}})


def test_settings_are_frozen_and_typed_and_round_trip_through_their_dict():
    s = Settings.from_dict(cfgmod.load(ROOT / "configs" / "wild.yaml"))
    assert isinstance(s.train, TrainSettings) and s.train.augment.prob == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.train.lr = 1.0
    assert Settings.from_dict(s.to_dict()) == s
    assert cfgmod.config_hash(Settings.from_dict(s.to_dict())) == cfgmod.config_hash(s)


def test_replace_changes_a_key_and_replaces_free_form_mappings_whole():
    s = Settings().replace(data={"detector": "mtcnn", "detector_options": {"margin": 0.2, "min_iou": 0.3}})
    t = s.replace(data={"detector_options": {"margin": 0.1}}, train={"augment": {"rotate": 10.0}})
    assert t.data.detector == "mtcnn" and t.data.detector_options == {"margin": 0.1}  # not merged
    assert t.train.augment.rotate == 10.0 and t.train.augment.prob == 1.0  # a section merges key by key
    assert s.data.detector_options == {"margin": 0.2, "min_iou": 0.3}  # the original is unchanged
    with pytest.raises(KpbenchError, match="no setting 'detecter'"):
        s.replace(data={"detecter": "none"})


def test_a_model_s_training_settings_are_resolved_once_in_the_plan():
    from kpbench.plugins import get_plugins
    from kpbench.runner import plan

    s = Settings.from_dict({"models": ["cnn", "cnn@slow"], "model_options": {
        "cnn@slow": {"width": 8, "input_size": 48, "train": {"lr": 0.0001, "augment": {"rotate": 5.0}}}}})
    p = plan(s, get_plugins())
    fast, slow = p.models["cnn"], p.models["cnn@slow"]
    assert (fast.input_size, fast.train.lr, fast.options) == (96, 0.001, {})
    assert (slow.input_size, slow.train.lr, slow.train.augment.rotate, slow.options) == (48, 0.0001, 5.0, {"width": 8})
    assert [(j.label, j.size) for j in p.jobs] == [("cnn", 96), ("cnn@slow", 48)]
    assert p.convention.detector == "none" and p.convention.margin is None


def test_no_module_below_the_command_line_reads_a_config_dict():
    """The YAML dict is read in config.py (the file in) and cli.py (the command's options) only."""
    lookups = {p.name: len(re.findall(r"""\b(?:config|cfg|dc|tc|ec|rc)\[["']""", p.read_text()))
               for p in (ROOT / "kpbench").glob("*.py") if p.name not in ("config.py", "cli.py")}
    assert {name: n for name, n in lookups.items() if n} == {}
