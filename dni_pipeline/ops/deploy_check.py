"""Offline checks of the deploy/ files: a `ray up` config through Ray's own prepare_config and
validate_config; a KubeRay manifest against the fields of the RayCluster and RayJob CRDs (ray.io/v1,
KubeRay v1.5.1), unknown fields rejected, required ones demanded, and the rules this project's
manifests rely on: token authentication, a head Service that stays inside the cluster, and what
KubeRay's own validation demands of a sidecar submitter. Each problem is one line naming file,
field and fix."""

import copy
import logging
from pathlib import Path

import yaml

from dni_pipeline.core.errors import UserError

__all__ = ["check_deploy_file", "check_kuberay", "check_ray_up"]

# CRD field lists (KubeRay ray-operator/apis/ray/v1): name -> required?
RAY_CLUSTER_SPEC = {"headGroupSpec": True, "workerGroupSpecs": False, "rayVersion": False, "authOptions": False,
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
AUTH_OPTIONS = {"mode": False}
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
TOKEN_AUTH_RAY = (2, 52, 0)  # the first Ray with token authentication
LOOPBACK = ("127.0.0.1", "localhost")


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
        env = container.get("env", [])
        if not isinstance(env, list) or not all(isinstance(e, dict) and e.get("name") for e in env):
            raise UserError(f"{path}: {where}.template.spec.containers[{i}].env must list name/value entries")


def _group(path: Path, at: str, group, allowed: dict[str, bool]) -> None:
    """A head or worker group: its CRD fields, its pod template, its `ray start` flags."""
    _fields(path, at, group, allowed)
    _pod_template(path, at, group["template"])
    params = group["rayStartParams"]
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise UserError(f"{path}: {at}.rayStartParams must map flag names to strings")


def _cluster_spec(path: Path, where: str, spec) -> None:
    _fields(path, where, spec, RAY_CLUSTER_SPEC)
    _group(path, f"{where}.headGroupSpec", spec["headGroupSpec"], HEAD_GROUP)
    groups = spec.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        raise UserError(f"{path}: {where}.workerGroupSpecs must be a list")
    for i, group in enumerate(groups):
        at = f"{where}.workerGroupSpecs[{i}]"
        _group(path, at, group, WORKER_GROUP)
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas") if group.get(k) is not None]
        if not all(isinstance(c, int) and c >= 0 for c in counts) or counts != sorted(counts):
            raise UserError(f"{path}: {at} needs integer minReplicas <= replicas <= maxReplicas")


def _containers(spec: dict):
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    for group in groups:
        yield from group["template"]["spec"]["containers"]


def _token_auth(path: Path, where: str, spec: dict) -> bool:
    """Whether the operator runs token authentication for this cluster (authOptions.mode token), checked."""
    if "authOptions" not in spec:
        return False
    _fields(path, f"{where}.authOptions", spec["authOptions"], AUTH_OPTIONS)
    mode = spec["authOptions"].get("mode", "token")
    if mode not in ("token", "disabled"):
        raise UserError(f"{path}: {where}.authOptions.mode is {mode!r}: use token")
    if mode == "disabled":
        return False
    version = str(spec.get("rayVersion", ""))
    parts = version.split(".")
    if not all(p.isdigit() for p in parts) or tuple(int(p) for p in parts) < TOKEN_AUTH_RAY:
        raise UserError(f"{path}: {where}.rayVersion {version or '(unset)'} has no token authentication: "
                        f"set it to {'.'.join(map(str, TOKEN_AUTH_RAY))} or newer")
    for container in _containers(spec):
        names = {e["name"] for e in container.get("env", [])}
        if names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}:
            raise UserError(f"{path}: container {container['name']} sets RAY_AUTH_MODE/RAY_AUTH_TOKEN itself: with "
                            f"{where}.authOptions the operator sets them from the Secret it creates; remove them")
    return True


def _head_stays_inside(path: Path, where: str, spec: dict, *, operator_reads_dashboard: bool) -> None:
    """The head's Service is only reachable inside the Kubernetes cluster; where the operator follows a job,
    the dashboard must listen on the pod's address (the operator reads job status over the Service)."""
    head = spec["headGroupSpec"]
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        raise UserError(f"{path}: {where}.headGroupSpec exposes the head outside the cluster (serviceType "
                        f"{head.get('serviceType')}, enableIngress {head.get('enableIngress')}): use ClusterIP and "
                        "`kubectl port-forward`")
    if operator_reads_dashboard and head["rayStartParams"].get("dashboard-host") in LOOPBACK:
        raise UserError(f"{path}: {where}.headGroupSpec.rayStartParams.dashboard-host is loopback, but the KubeRay "
                        "operator reads the job's status over the head Service: drop it (token auth guards the port)")


def _ray_job(path: Path, spec: dict) -> None:
    _fields(path, "spec", spec, RAY_JOB_SPEC)
    if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
        raise UserError(f"{path}: a RayJob needs exactly one of spec.rayClusterSpec and spec.clusterSelector")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        raise UserError(f"{path}: spec.submissionMode {mode!r} is not one of {', '.join(SUBMISSION_MODES)}")
    if "runtimeEnvYAML" in spec:
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError:
            env = None
        if not isinstance(env, dict):
            raise UserError(f"{path}: spec.runtimeEnvYAML must be a YAML mapping in a string (a runtime environment)")
    if "clusterSelector" in spec:
        if mode == "SidecarMode":
            raise UserError(f"{path}: SidecarMode runs the submitter in the head pod of the job's own cluster: "
                            "use spec.rayClusterSpec, not spec.clusterSelector")
        return
    cluster = spec["rayClusterSpec"]
    _cluster_spec(path, "spec.rayClusterSpec", cluster)
    if mode == "SidecarMode":
        for field in ("submitterPodTemplate", "submitterConfig"):
            if field in spec:
                raise UserError(f"{path}: spec.{field} has no meaning in SidecarMode (KubeRay refuses it): remove it")
        if cluster["headGroupSpec"]["template"]["spec"].get("restartPolicy", "Never") != "Never":
            raise UserError(f"{path}: SidecarMode needs the head pod's restartPolicy Never (or unset)")
    if not _token_auth(path, "spec.rayClusterSpec", cluster):
        raise UserError(f"{path}: spec.rayClusterSpec.authOptions.mode must be token: then the operator holds the "
                        "token it needs to submit and follow the job (KubeRay v1.5.1 or newer)")
    _head_stays_inside(path, "spec.rayClusterSpec", cluster, operator_reads_dashboard=mode != "InteractiveMode")


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
        _token_auth(path, "spec", spec)
        _head_stays_inside(path, "spec", spec, operator_reads_dashboard=False)
    elif kind == "RayJob":
        _ray_job(path, spec)
    else:
        raise UserError(f"{path}: kind {kind!r} is not RayCluster or RayJob")
    return kind


def check_deploy_file(path: Path) -> str:
    """Check one deploy file, KubeRay manifest or `ray up` config by its content; a line saying what it is."""
    content = _load(path)
    if "apiVersion" in content or "kind" in content:
        return f"{path}: KubeRay {check_kuberay(path, content)} ok"
    return f"{path}: ray up config ok (node types {', '.join(check_ray_up(path, content))})"
