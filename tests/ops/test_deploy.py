"""deploy/: Ray's own validation of the `ray up` configs, the KubeRay field check, broken copies
rejected; and a real multi-node cluster on this machine running a 2-stage job (marked slow)."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dni_pipeline.core.errors import UserError
from dni_pipeline.ops import cluster
from dni_pipeline.ops.deploy_check import check_kuberay, check_ray_up

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RAY_UP = sorted(DEPLOY.glob("*.yaml"))
KUBERAY = sorted((DEPLOY / "kuberay").glob("*.yaml"))

pytest.importorskip("ray.autoscaler._private.util", reason="Ray moved its private config validation")


def _load(path):
    return yaml.safe_load(path.read_text())


def test_the_deploy_folder_has_every_kind_of_file():
    assert {p.name for p in RAY_UP} == {"aws.yaml", "onprem.yaml"}
    assert {_load(p)["kind"] for p in KUBERAY} == {"RayCluster", "RayJob"}
    assert (DEPLOY / "README.md").is_file() and (DEPLOY / "Dockerfile").is_file()


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_configs_pass_rays_validation_and_broken_copies_fail(path):
    config = _load(path)
    types = check_ray_up(path, config)
    if config["provider"]["type"] == "aws":
        assert types == ["head.cpu", "worker.cpu", "worker.gpu"]
        worker_slots = [t["resources"].get("stage_slot") for n, t in config["available_node_types"].items() if n != "head.cpu"]
        assert worker_slots == [1, 1] and config["available_node_types"]["worker.gpu"]["resources"]["GPU"] == 1
    unknown = {**copy.deepcopy(config), "colour": "red"}
    with pytest.raises(UserError, match="'colour' was unexpected"):
        check_ray_up(path, unknown)
    broken = copy.deepcopy(config)
    if config["provider"]["type"] == "aws":
        broken["head_node_type"] = "head.missing"
        with pytest.raises(UserError, match="head_node_type"):
            check_ray_up(path, broken)
    else:
        del broken["provider"]["head_ip"]
        with pytest.raises(UserError, match="head_ip"):
            check_ray_up(path, broken)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifests_carry_the_crd_fields_and_broken_copies_fail(path):
    manifest = _load(path)
    assert check_kuberay(path, manifest) == manifest["kind"]
    spec = _cluster_spec(manifest)
    for group in spec["workerGroupSpecs"]:
        assert "stage_slot" in group["rayStartParams"]["resources"]
    breakages = {
        "unknown field": (lambda m: m["spec"].update(colour="red"), "unknown field"),
        "no head group": (lambda m: _cluster_spec(m).pop("headGroupSpec"),
                          "lacks required field"),
        "no image": (lambda m: _cluster_spec(m)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("image"),
                     "needs a name and an image"),
        "public head": (lambda m: _cluster_spec(m)["headGroupSpec"].update(serviceType="LoadBalancer"),
                        "exposes the head outside the cluster"),
        "head flags not a mapping": (lambda m: _cluster_spec(m)["headGroupSpec"].update(rayStartParams="x"),
                                     r"headGroupSpec.rayStartParams must map flag names to strings"),
        "env not a list": (lambda m: _cluster_spec(m)["headGroupSpec"]["template"]["spec"]["containers"][0]
                           .update(env=None), r"containers\[0\].env must list name/value entries"),
        "old api": (lambda m: m.update(apiVersion="ray.io/v1alpha1"), "ray.io/v1"),
    }
    for breaking, message in breakages.values():
        broken = copy.deepcopy(manifest)
        breaking(broken)
        with pytest.raises(UserError, match=message):
            check_kuberay(path, broken)
    if manifest["kind"] == "RayJob":
        broken = copy.deepcopy(manifest)
        broken["spec"].pop("entrypoint")
        with pytest.raises(UserError, match="entrypoint"):
            check_kuberay(path, broken)


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]


def _head(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"]["headGroupSpec"]


def _add_env(manifest: dict) -> None:
    container = _head(manifest)["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "RAY_AUTH_TOKEN", "value": "x"})


def test_the_ray_job_is_submitted_by_a_sidecar_with_operator_managed_token_auth():
    """KubeRay >= 1.5.1: the submitter runs in the head pod and reaches the dashboard on localhost, the
    operator creates the token and sends it when it reads the job's status over the head's ClusterIP Service.
    The manifest as it was (dashboard on 127.0.0.1, default submitter pod, no operator-held token) fails."""
    path = DEPLOY / "kuberay" / "rayjob.yaml"
    manifest = _load(path)
    spec = manifest["spec"]
    assert spec["submissionMode"] == "SidecarMode" and spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert "dashboard-host" not in _head(manifest)["rayStartParams"] and _head(manifest)["serviceType"] == "ClusterIP"
    breakages = {
        "as it was": (lambda m: (m["spec"].pop("submissionMode"), m["spec"]["rayClusterSpec"].pop("authOptions"),
                                 _head(m)["rayStartParams"].update({"dashboard-host": "127.0.0.1"})),
                      "authOptions.mode must be token"),
        "dashboard on loopback": (lambda m: _head(m)["rayStartParams"].update({"dashboard-host": "127.0.0.1"}),
                                  "dashboard-host is loopback"),
        "old Ray": (lambda m: m["spec"]["rayClusterSpec"].update(rayVersion="2.50.0"), "has no token authentication"),
        "token set by hand too": (_add_env, "sets RAY_AUTH_MODE/RAY_AUTH_TOKEN itself"),
        "auth disabled": (lambda m: m["spec"]["rayClusterSpec"]["authOptions"].update(mode="disabled"),
                          "authOptions.mode must be token"),
        "head restarts": (lambda m: _head(m)["template"]["spec"].update(restartPolicy="Always"),
                          "restartPolicy Never"),
        "submitter pod": (lambda m: m["spec"].update(submitterPodTemplate={}), "no meaning in SidecarMode"),
        "unknown mode": (lambda m: m["spec"].update(submissionMode="PigeonMode"), "is not one of"),
    }
    for breaking, message in breakages.values():
        broken = copy.deepcopy(manifest)
        breaking(broken)
        with pytest.raises(UserError, match=message):
            check_kuberay(path, broken)


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "dni_pipeline", *args], capture_output=True, text=True,
                          env=env or cluster.auth_env(), timeout=timeout)


@pytest.mark.slow
def test_a_multi_node_cluster_runs_a_two_stage_job_on_two_nodes(tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    folder = tmp_path / "cluster"
    start = time.time()
    state = cluster.start(folder, workers=2, cpus_per_worker=1)
    try:
        assert cluster.status(folder)["alive_nodes"] == 3
        client = JobSubmissionClient(state["dashboard"], headers=cluster.auth_headers())
        run = tmp_path / "run"
        job = client.submit_job(entrypoint=f"{sys.executable} -m dni_pipeline train --mode dni --stages 2 --dataset "
                                           f"synthetic --epochs 1 --batch-size 128 --no-progress --out {run}")
        deadline = time.time() + 240
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.time() < deadline, client.get_job_logs(job)[-2000:]
            time.sleep(1)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-2000:]
        placement = json.loads((run / "summary.json").read_text())["placement"]
        assert len({p["node_id"] for p in placement}) == 2  # the two stages on two different nodes
        print(f"multi-node job: cluster start to job success {time.time() - start:.1f} s")

        # Bad input against the live cluster: more stages than stage slots, and no auth token.
        too_many = _cli("train", "--address", state["address"], "--stages", "3", "--cpus-per-stage", "0.5",
                        "--dataset", "synthetic", "--out", str(tmp_path / "never"))
        assert too_many.returncode == 2 and "stage_slots but this needs 3" in too_many.stderr
        no_token = _cli("train", "--address", state["address"], "--dataset", "synthetic", "--out", str(tmp_path / "never"),
                        env={**cluster.auth_env(), "HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
        assert no_token.returncode == 2 and "auth token" in no_token.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "never").exists()
    finally:
        pids = state["pids"]
        cluster.stop(folder)
    assert not any(cluster._group_alive(pid) for pid in pids)


def test_cluster_commands_refuse_a_folder_without_a_cluster(tmp_path):
    result = _cli("cluster", "stop", "--dir", str(tmp_path))
    assert result.returncode == 2 and "no local cluster recorded" in result.stderr
