"""The presets stay what they were: every preset and model preset equals a snapshot of its settings.

tests/fixtures/presets.json is `dataclasses.asdict` of each preset (and of `get_model_config`'s "paper"
and "tiny"), captured before the presets moved into their override files (cirtutor/presets/). The shipped
trained models are named by digests of these settings (docs/caching.md), so a preset that drifts loses
them: change a preset on purpose, then ship its models again and capture the snapshot anew.
"""
import copy
import dataclasses
import importlib
import json
import sys
import types
from pathlib import Path

import pytest

from cirtutor.config import (PRESETS, Config, _get, _load_preset, config_from_dict, get_model_config,
                             get_preset)
from cirtutor.errors import CirtutorError

SNAPSHOT = json.loads((Path(__file__).parent / "fixtures" / "presets.json").read_text())


def flat(d: dict, prefix: str = "") -> dict:
    """{"stage2": {"lr": 6e-4}} as {"stage2.lr": 6e-4}."""
    out = {}
    for key, value in d.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def differences(section, saved: dict) -> dict:
    """The fields in which a config (or section) differs from its snapshot, as field: (saved, now), compared as
    JSON: 10 and 10.0, or a tuple and a missing field, differ."""
    now, was = flat(json.loads(json.dumps(dataclasses.asdict(section)))), flat(saved)
    return {k: (was.get(k, "(absent)"), now.get(k, "(absent)")) for k in sorted(set(now) | set(was))
            if json.dumps(now.get(k)) != json.dumps(was.get(k)) or (k in now) != (k in was)}


@pytest.mark.parametrize("name", sorted(SNAPSHOT["presets"]))
def test_each_preset_equals_its_snapshot(name):
    cfg, saved = get_preset(name), SNAPSHOT["presets"][name]
    assert not differences(cfg, saved), f"preset {name} moved from its snapshot (saved, now)"
    assert cfg == config_from_dict(saved)       # dataclass equality, the tuples as tuples


@pytest.mark.parametrize("name", sorted(SNAPSHOT["models"]))
def test_each_model_preset_equals_its_snapshot(name):
    assert not differences(get_model_config(name), SNAPSHOT["models"][name])


def test_the_presets_are_the_snapshots_in_order():
    assert list(PRESETS) == ["tiny", "tiny_fashioniq", "paper_fashioniq", "paper_cirr"]
    assert set(PRESETS) == set(SNAPSHOT["presets"])
    assert get_model_config("tiny") == get_preset("tiny").model and get_model_config("paper") == Config().model


def test_the_check_sees_a_changed_type_or_value():
    """The comparison can fail: an int turned float, a value moved, a tuple turned list."""
    saved = SNAPSHOT["presets"]["tiny"]
    for change in ({"epochs": 10.0}, {"lr": 6.0001e-4}, {"select": "best"}):
        cfg = get_preset("tiny")
        cfg.stage2 = dataclasses.replace(cfg.stage2, **change)
        (field, value), = change.items()
        assert differences(cfg, saved) == {f"stage2.{field}": (saved["stage2"][field], value)}
    cfg = get_preset("tiny")
    cfg.stage2.eval_ks = list(cfg.stage2.eval_ks)
    assert cfg != config_from_dict(saved)


def test_get_preset_returns_a_fresh_copy_and_names_the_choices():
    cfg = get_preset("tiny")
    cfg.stage2.lr, cfg.model.text_layers = 1.0, 1
    assert get_preset("tiny") == config_from_dict(SNAPSHOT["presets"]["tiny"])
    assert copy.deepcopy(PRESETS["tiny"]) == get_preset("tiny")
    with pytest.raises(CirtutorError, match="unknown preset 'huge'; choose one of tiny, tiny_fashioniq, "
                                            "paper_fashioniq, paper_cirr"):
        get_preset("huge")


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_override_file_says_only_what_differs(name):
    """Every override of cirtutor/presets/<name>.py changes its base (the defaults, or BASE)."""
    module = importlib.import_module(f"cirtutor.presets.{name}")
    base = get_preset(module.BASE) if getattr(module, "BASE", None) else Config()
    same = [key for key, value in module.OVERRIDES.items() if _get(base, key) == value]
    assert not same, f"{name} sets what its base already has: {same}"


@pytest.mark.parametrize("overrides, message", [({"stage2.lrr": 1e-3}, "unknown field 'stage2.lrr'"),
                                                ({"stage3.lr": 1e-3}, "unknown config section 'stage3'"),
                                                ({"stage2.dropout": 0}, "stage2.dropout=0 is not a"),
                                                ({"stage2.eval_ks": [5, 10]}, "stage2.eval_ks=.5, 10. is not a")])
def test_a_preset_file_with_a_wrong_key_or_type_is_refused(monkeypatch, overrides, message):
    """A misspelt field, or a value of another type (0 for 0.0 would change the digests that name the shipped
    models), fails when the presets load."""
    module = types.ModuleType("cirtutor.presets.bad")
    module.BASE, module.OVERRIDES = "tiny", overrides
    monkeypatch.setitem(sys.modules, "cirtutor.presets.bad", module)
    with pytest.raises(CirtutorError, match=message):
        _load_preset("bad")
