"""The run folder: the one owner of config.json, summary.json, metrics.jsonl and the checkpoint names."""

import dataclasses

import pytest

from dni_pipeline.core.configs import from_dict, with_values
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.run_folder import RunFolder


def test_a_metrics_line_cut_by_a_kill_is_dropped_and_a_damaged_one_is_named(tmp_path):
    folder = RunFolder(tmp_path).create()
    folder.append_metrics([{"step": 1}, {"step": 2}])
    with open(folder.file("metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "lo')  # the writer was killed mid-line
    folder.trim_metrics(lambda r: r["step"] <= 2)
    assert folder.read_metrics() == [{"step": 1}, {"step": 2}]
    folder.file("metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2 is not a JSON record"):
        folder.read_metrics()


@dataclasses.dataclass
class _Train:
    steps: int = 10
    lr: float = 0.1


@dataclasses.dataclass
class _Job:
    dataset: str = "moons"
    train: _Train = dataclasses.field(default_factory=_Train)

    def validate(self):
        if self.train.steps < 1:
            raise UserError("--steps must be at least 1")
        return self


def test_a_nested_config_round_trips_through_config_json(tmp_path):
    folder = RunFolder(tmp_path / "run").create()
    cfg = _Job(dataset="8gaussians", train=_Train(steps=3))
    folder.write_config(cfg)
    assert folder.read_config(_Job) == cfg and isinstance(folder.read_config(_Job).train, _Train)
    assert from_dict(_Job, dataclasses.asdict(cfg)) == cfg
    assert with_values(cfg, {"steps": 7, "dataset": "moons"}) == _Job("moons", _Train(steps=7))
    with pytest.raises(UserError, match="--steps must be at least 1"):
        with_values(cfg, {"steps": 0})


def test_a_new_folder_must_be_new_and_an_existing_one_must_hold_its_checkpoint(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="already holds files"):
        RunFolder(tmp_path / "full")
    with pytest.raises(UserError, match=r"nothing to resume in .* \(no checkpoint.pt\)"):
        RunFolder.existing(tmp_path / "full")
    folder = RunFolder(tmp_path / "new").create()
    folder.write_manifest({"step": 4})
    assert RunFolder.existing(folder.path, checkpoint=RunFolder.MANIFEST).read_manifest() == {"format": 1, "step": 4}
    folder.file(RunFolder.MANIFEST).write_text('{"format": 9}')
    with pytest.raises(UserError, match="is not the manifest of a dni-pipeline run"):
        folder.read_manifest()
