"""The Ray session a command works in: join a cluster or start a local Ray sized for the job, and
refuse, before any work, what the cluster can never schedule."""

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import UserError

__all__ = ["INLINE_BYTES", "STAGE_SLOT", "Resources", "check_task_resources", "connect_ray",
           "inline_system_config", "require_resources", "start_local_ray"]

log = logging.getLogger("dni_pipeline.core")

STAGE_SLOT = "stage_slot"  # custom resource a cluster's nodes offer: one per place a stage actor may run

# Ray passes a task's arguments up to this size inside the call instead of through the object store. Its
# default (100 KiB) sends the bench model's 256 KiB micro-batch activations through the store: a call between
# two actors on one machine took 3.2-4.0 ms that way and 2.0-2.7 ms inline, while at 512 KiB inline was no longer
# faster (benchmarks/diagnoses/inline_threshold.py; benchmarks/results/locked-vs-torch/inline_threshold.md).
INLINE_BYTES = 384 * 1024


@dataclass(frozen=True)
class Resources:
    """What one task reserves; it also runs as many torch threads as CPUs."""

    num_cpus: float = 1
    num_gpus: float = 0


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at host:port."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address '{address}' is not host:port: use the GCS address printed by `ray start --head`")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"no Ray cluster reachable at {address} ({exc.strerror or exc}): start one with `ray start --head` "
            "or fix --address"
        ) from None


@contextlib.contextmanager
def connect_ray(address: str | None, cpus_needed: float, dashboard: bool = False) -> Iterator[None]:
    """Join a cluster (`address`) or start a local Ray sized for the job; reuse one already connected.

    A local Ray gets at least `cpus_needed` logical CPUs, so K one-CPU stages run on a smaller machine
    (they then share its cores, which the log says). `dashboard` starts its dashboard too, whose state
    API Ray Train's controller polls (without it, it logs a warning every second).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set for the entrypoint of a Ray job
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except ray.exceptions.AuthenticationError:
            raise UserError(f"the Ray cluster at {address} wants its auth token and none was found: set "
                            "RAY_AUTH_MODE=token and put the cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN") from None
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"could not join the Ray cluster at {address} ({exc}): check --address; a cluster with "
                            "token authentication also needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token") from None
    else:
        cores = os.cpu_count() or 1
        if cpus_needed > cores:
            log.info("%g CPUs requested on a %d-core machine: the stages will share cores", cpus_needed, cores)
        start_local_ray(max(cores, int(-(-cpus_needed // 1))), include_dashboard=dashboard, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def inline_system_config() -> dict:
    """Ray's system config for a Ray this project starts (passing arrays up to INLINE_BYTES inside the call);
    empty where the user has set RAY_max_direct_call_object_size, which would otherwise be overridden."""
    return {} if "RAY_max_direct_call_object_size" in os.environ else {"max_direct_call_object_size": INLINE_BYTES}


def start_local_ray(num_cpus: float, **options) -> None:
    """A new Ray of our own on this machine ("local": even where `ray start` left /tmp/ray/ray_current_cluster
    behind) with `inline_system_config`. A cluster this joins keeps its own settings."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, _system_config=inline_system_config(), **options)


def require_resources(needs: dict[str, float], fix: str) -> None:
    """Refuse work the connected cluster can never schedule (Ray would leave it pending forever)."""
    import ray

    have = ray.cluster_resources()
    for kind, need in needs.items():
        if need > have.get(kind, 0.0):
            raise UserError(f"the Ray cluster has {have.get(kind, 0.0):g} {kind}s but this needs {need:g}: {fix}")


def check_task_resources(device: str, resources: Resources) -> None:
    """Refuse a task that asks for cuda without a GPU, or for more than the cluster has."""
    if device == "cuda" and resources.num_gpus < 1:
        raise UserError("--device cuda needs a GPU for the task: add --num-gpus 1")
    require_resources({"CPU": resources.num_cpus, "GPU": resources.num_gpus},
                      "lower --num-cpus / --num-gpus or add nodes")
