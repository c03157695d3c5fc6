"""The shipped exercise results (cirtutor/assets/exercises/): one per trained exercise, current, and used by its solution."""
import json
from pathlib import Path

import pytest

from cirtutor import exercises
from cirtutor.errors import CirtutorError
from cirtutor.exercises import EXERCISES, SHIPPED_EXERCISES, make, rows_table, shipped_exercise

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = list(EXERCISES)


@pytest.mark.parametrize("exercise", SHIPPED)
def test_each_trained_exercise_ships_a_current_result_its_solution_loads(exercise):
    result = shipped_exercise(exercise)                  # refused if a run's model is not what the package trains now
    assert list(result["runs"]) == [run.label for run in EXERCISES[exercise]]
    for run in result["runs"].values():
        assert run["metrics"]                            # measured, not empty
    solution = (ROOT / "solutions" / f"{exercise[:2]}_solutions.ipynb").read_text()
    assert f'show(\\"{exercise}\\")' in solution


def test_no_shipped_result_without_its_exercise():
    assert sorted(p.stem for p in SHIPPED_EXERCISES.glob("*.json")) == sorted(SHIPPED)


def test_a_stale_or_missing_result_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(exercises, "SHIPPED_EXERCISES", tmp_path)
    with pytest.raises(CirtutorError, match="cirtutor exercise 04.1"):
        shipped_exercise("04.1")
    result = json.loads((SHIPPED_EXERCISES / "09.2.json").read_text())
    result["runs"]["Pic2Word's prompt"]["model"] = "tiny-zeroshot-000000000000"     # trained by an older config
    (tmp_path / "09.2.json").write_text(json.dumps(result))
    with pytest.raises(CirtutorError, match="stale") as err:
        shipped_exercise("09.2")
    assert "\n" not in str(err.value)
    with pytest.raises(CirtutorError, match="answered live"):
        shipped_exercise("06.1")


def test_make_writes_every_run_with_its_model_and_measurements(tmp_path, monkeypatch):
    monkeypatch.setattr(exercises, "measure", lambda run, preset, seed: {"metrics": {"R@1": 1.0, "label": run.label}})
    path = make("08.2", out=tmp_path / "x.json")
    result = json.loads(path.read_text())
    assert result["command"] == "cirtutor exercise 08.2" and result["seed"] == 0
    assert [r["metrics"]["label"] for r in result["runs"].values()] == [run.label for run in EXERCISES["08.2"]]
    assert [r["model"] for r in result["runs"].values()] == [exercises.model_dir(run).name for run in EXERCISES["08.2"]]
    assert [r["overrides"] for r in result["runs"].values()] == [list(run.overrides) for run in EXERCISES["08.2"]]


def test_the_exercise_runs_change_only_what_the_exercise_says():
    base = exercises.run_config(exercises.ExerciseRun("x", "cala"))
    assert exercises.run_config(EXERCISES["08.2"][0]).stage1.cala.w_c == 0 != base.stage1.cala.w_c
    assert exercises.run_config(EXERCISES["09.3"][0]).zeroshot.temp is None
    assert exercises.model_dir(EXERCISES["07.1"][0]) != exercises.model_dir(EXERCISES["07.2"][0])


def test_rows_table():
    text = rows_table({"F": {"R@1": 24.2, "R@5": 57.6}, "R": {"R@1": 30.6}}, ("R@1", "R@5"))
    assert text.splitlines() == ["        R@1     R@5", "F      24.2    57.6", "R      30.6       —"]
