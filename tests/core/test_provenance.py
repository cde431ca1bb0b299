"""Provenance: the commit and tree state a result was made from, in one record and one sentence."""

from dni_pipeline.core import provenance as prov


def test_a_checkout_records_its_commit_and_whether_it_has_changes(monkeypatch):
    record = prov.provenance()
    assert len(record["commit"]) == 40 and record["dirty"] == bool(record["changed_files"])
    assert record["cpus"] >= 1 and len(record["load_average"]) == 3 and record["torch"]
    line = prov.provenance_line({**record, "dirty": True, "changed_files": ["a.py"], "host_cpu_busy": 0.5})
    assert line.startswith(f"Provenance: commit {record['commit'][:10]} with uncommitted changes to a.py;")
    assert "host CPUs 50% busy over the run" in line
    assert "(clean tree)" in prov.provenance_line({**record, "dirty": False, "changed_files": [], "host_cpu_busy": None})


def test_outside_a_git_checkout_there_is_no_commit(monkeypatch, tmp_path):
    monkeypatch.setattr(prov, "_ROOT", tmp_path)
    record = prov.provenance()
    assert record["commit"] is None and record["dirty"] is None
    assert prov.provenance_line(record).startswith("Provenance: no git commit;")


def test_every_run_folder_summary_has_its_provenance_beside_it(tmp_path):
    import json

    from dni_pipeline.core.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run").create()
    folder.write_summary({"test_mrr": 0.5})
    record = json.loads(folder.file("provenance.json").read_text())
    assert json.loads(folder.file("summary.json").read_text()) == {"test_mrr": 0.5}
    assert set(record) >= {"commit", "dirty", "command", "torch", "ray", "cpus", "load_average"}


def test_an_install_inside_another_repository_has_no_commit(monkeypatch, tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(prov, "_ROOT", tmp_path / "site-packages")
    (tmp_path / "site-packages").mkdir()
    assert prov.provenance()["commit"] is None
