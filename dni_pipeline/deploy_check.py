"""Offline checks of the deploy/ files: a `ray up` config through Ray's own prepare_config and
validate_config; a KubeRay manifest against the fields of the RayCluster and RayJob CRDs (ray.io/v1),
unknown fields rejected, required ones demanded. Each problem is one line naming file, field and fix."""

import copy
import logging
from pathlib import Path

import yaml

from .errors import UserError

__all__ = ["check_deploy_file", "check_kuberay", "check_ray_up"]

# CRD field lists (KubeRay ray-operator/apis/ray/v1): name -> required?
RAY_CLUSTER_SPEC = {"headGroupSpec": True, "workerGroupSpecs": False, "rayVersion": False,
                    "enableInTreeAutoscaling": False, "autoscalerOptions": False, "headServiceAnnotations": False,
                    "suspend": False, "managedBy": False, "gcsFaultToleranceOptions": False}
HEAD_GROUP = {"rayStartParams": True, "template": True, "serviceType": False, "headService": False,
              "enableIngress": False}
WORKER_GROUP = {"groupName": True, "rayStartParams": True, "template": True, "replicas": False, "minReplicas": False,
                "maxReplicas": False, "numOfHosts": False, "scaleStrategy": False, "idleTimeoutSeconds": False,
                "suspend": False}
RAY_JOB_SPEC = {"entrypoint": True, "runtimeEnvYAML": False, "jobId": False, "shutdownAfterJobFinishes": False,
                "ttlSecondsAfterFinished": False, "rayClusterSpec": False, "clusterSelector": False,
                "submitterPodTemplate": False, "submitterConfig": False, "entrypointNumCpus": False,
                "entrypointNumGpus": False, "entrypointResources": False, "submissionMode": False,
                "activeDeadlineSeconds": False, "backoffLimit": False, "suspend": False, "managedBy": False,
                "deletionStrategy": False}
TOP_LEVEL = {"apiVersion": True, "kind": True, "metadata": True, "spec": True}


def _load(path: Path) -> dict:
    try:
        value = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}): fix its syntax") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a YAML mapping")
    return value


def check_ray_up(path: Path, config: dict | None = None) -> list[str]:
    """Ray's own validation of a cluster config (as `ray up` does before launching); returns the node types."""
    from ray.autoscaler._private.util import prepare_config, validate_config  # private API: tests skip if it moves

    config = copy.deepcopy(config if config is not None else _load(path))
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    try:
        prepared = prepare_config(config)
        validate_config(prepared)
    except SystemExit:  # the local provider's panic for a missing head_ip
        raise UserError(f"{path}: the local provider needs provider.head_ip and provider.worker_ips") from None
    except Exception as exc:  # jsonschema.ValidationError, ValueError, click.ClickException
        message = getattr(exc, "message", None) or str(exc).splitlines()[0]
        where = "/".join(str(p) for p in getattr(exc, "absolute_path", [])) or "config"
        raise UserError(f"{path}: {where}: {message}: fix it (`ray up` would refuse it)") from None
    return list(prepared["available_node_types"])


def _fields(path: Path, where: str, obj, allowed: dict[str, bool]) -> None:
    if not isinstance(obj, dict):
        raise UserError(f"{path}: {where} must be a mapping")
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise UserError(f"{path}: {where} has unknown field(s) {', '.join(unknown)}: the CRD knows {', '.join(allowed)}")
    missing = [name for name, required in allowed.items() if required and name not in obj]
    if missing:
        raise UserError(f"{path}: {where} lacks required field(s) {', '.join(missing)}")


def _pod_template(path: Path, where: str, template) -> None:
    containers = (template or {}).get("spec", {}).get("containers") if isinstance(template, dict) else None
    if not isinstance(containers, list) or not containers:
        raise UserError(f"{path}: {where}.template.spec.containers must list at least one container")
    for i, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name") or not container.get("image"):
            raise UserError(f"{path}: {where}.template.spec.containers[{i}] needs a name and an image")


def _cluster_spec(path: Path, where: str, spec) -> None:
    _fields(path, where, spec, RAY_CLUSTER_SPEC)
    _fields(path, f"{where}.headGroupSpec", spec["headGroupSpec"], HEAD_GROUP)
    _pod_template(path, f"{where}.headGroupSpec", spec["headGroupSpec"]["template"])
    groups = spec.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        raise UserError(f"{path}: {where}.workerGroupSpecs must be a list")
    for i, group in enumerate(groups):
        at = f"{where}.workerGroupSpecs[{i}]"
        _fields(path, at, group, WORKER_GROUP)
        _pod_template(path, at, group["template"])
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas") if group.get(k) is not None]
        if not all(isinstance(c, int) and c >= 0 for c in counts) or counts != sorted(counts):
            raise UserError(f"{path}: {at} needs integer minReplicas <= replicas <= maxReplicas")
        if not isinstance(group["rayStartParams"], dict) or not all(isinstance(v, str) for v in group["rayStartParams"].values()):
            raise UserError(f"{path}: {at}.rayStartParams must map flag names to strings")


def check_kuberay(path: Path, manifest: dict | None = None) -> str:
    """Check a RayCluster or RayJob manifest field by field; returns its kind."""
    manifest = manifest if manifest is not None else _load(path)
    _fields(path, "manifest", manifest, TOP_LEVEL)
    if manifest["apiVersion"] != "ray.io/v1":
        raise UserError(f"{path}: apiVersion is {manifest['apiVersion']!r}: KubeRay's current API is ray.io/v1")
    if not isinstance(manifest["metadata"], dict) or not manifest["metadata"].get("name"):
        raise UserError(f"{path}: metadata.name is required")
    kind, spec = manifest["kind"], manifest["spec"]
    if kind == "RayCluster":
        _cluster_spec(path, "spec", spec)
    elif kind == "RayJob":
        _fields(path, "spec", spec, RAY_JOB_SPEC)
        if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
            raise UserError(f"{path}: a RayJob needs exactly one of spec.rayClusterSpec and spec.clusterSelector")
        if "rayClusterSpec" in spec:
            _cluster_spec(path, "spec.rayClusterSpec", spec["rayClusterSpec"])
        if "runtimeEnvYAML" in spec:
            try:
                env = yaml.safe_load(spec["runtimeEnvYAML"])
            except yaml.YAMLError:
                env = None
            if not isinstance(env, dict):
                raise UserError(f"{path}: spec.runtimeEnvYAML must be a YAML mapping in a string (a runtime environment)")
    else:
        raise UserError(f"{path}: kind {kind!r} is not RayCluster or RayJob")
    return kind


def check_deploy_file(path: Path) -> str:
    """Check one deploy file, KubeRay manifest or `ray up` config by its content; a line saying what it is."""
    content = _load(path)
    if "apiVersion" in content or "kind" in content:
        return f"{path}: KubeRay {check_kuberay(path, content)} ok"
    return f"{path}: ray up config ok (node types {', '.join(check_ray_up(path, content))})"
