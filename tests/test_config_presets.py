"""The presets stay what they were: every preset and model preset equals a snapshot of its settings.

tests/fixtures/presets.json is `dataclasses.asdict` of each preset (and of `get_model_config`'s "paper"
and "tiny"), captured before the presets moved into their override files (cirtutor/presets/). The shipped
trained models are named by digests of these settings (docs/caching.md), so a preset that drifts loses
them: change a preset on purpose, then ship its models again and capture the snapshot anew.
"""
import copy
import dataclasses
import json
from pathlib import Path

import pytest

from cirtutor.config import PRESETS, Config, config_from_dict, get_model_config, get_preset
from cirtutor.errors import CirtutorError

SNAPSHOT = json.loads((Path(__file__).parent / "fixtures" / "presets.json").read_text())


def as_json(section) -> str:
    """A config (or section) as sorted JSON: 10 and 10.0, or a changed string, read differently."""
    return json.dumps(dataclasses.asdict(section), sort_keys=True)


@pytest.mark.parametrize("name", sorted(SNAPSHOT["presets"]))
def test_each_preset_equals_its_snapshot(name):
    cfg, saved = get_preset(name), SNAPSHOT["presets"][name]
    assert as_json(cfg) == json.dumps(saved, sort_keys=True)
    assert cfg == config_from_dict(saved)       # dataclass equality, the tuples as tuples


@pytest.mark.parametrize("name", sorted(SNAPSHOT["models"]))
def test_each_model_preset_equals_its_snapshot(name):
    assert as_json(get_model_config(name)) == json.dumps(SNAPSHOT["models"][name], sort_keys=True)


def test_the_presets_are_the_snapshots_in_order():
    assert list(PRESETS) == ["tiny", "tiny_fashioniq", "paper_fashioniq", "paper_cirr"]
    assert set(PRESETS) == set(SNAPSHOT["presets"])
    assert get_model_config("tiny") == get_preset("tiny").model and get_model_config("paper") == Config().model


def test_the_check_sees_a_changed_type_or_value():
    """The comparison can fail: an int turned float, a tuple turned list, one value moved."""
    saved = json.dumps(SNAPSHOT["presets"]["tiny"], sort_keys=True)
    for change in ({"epochs": 10.0}, {"lr": 6.0001e-4}, {"select": "best"}):
        cfg = get_preset("tiny")
        cfg.stage2 = dataclasses.replace(cfg.stage2, **change)
        assert as_json(cfg) != saved
    cfg = get_preset("tiny")
    cfg.stage2.eval_ks = list(cfg.stage2.eval_ks)
    assert cfg != config_from_dict(SNAPSHOT["presets"]["tiny"])


def test_get_preset_returns_a_fresh_copy_and_names_the_choices():
    cfg = get_preset("tiny")
    cfg.stage2.lr, cfg.model.text_layers = 1.0, 1
    assert get_preset("tiny") == config_from_dict(SNAPSHOT["presets"]["tiny"])
    assert copy.deepcopy(PRESETS["tiny"]) == get_preset("tiny")
    with pytest.raises(CirtutorError, match="unknown preset 'huge'; choose one of tiny, tiny_fashioniq, "
                                            "paper_fashioniq, paper_cirr"):
        get_preset("huge")
