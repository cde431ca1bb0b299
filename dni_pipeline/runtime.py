"""Runtime concerns shared by every job (pipeline, diffusion, KG): Ray connection, run folders, results files."""

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError

__all__ = ["atomic_path", "check_task_resources", "connect_ray", "fetch_verified", "require_resources", "RunFolder", "submit_run",
           "write_json_atomic"]

log = logging.getLogger("dni_pipeline")


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
def connect_ray(address: str | None, cpus_needed: float) -> Iterator[None]:
    """Join a cluster (`address`) or start a local Ray sized for the job; reuse one already connected.

    A local Ray gets at least `cpus_needed` logical CPUs, so K one-CPU stages run on a smaller machine
    (they then share its cores, which the log says).
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
        # "local": always a new Ray of our own, even where `ray start` left /tmp/ray/ray_current_cluster behind.
        ray.init(address="local", num_cpus=max(cores, int(-(-cpus_needed // 1))), include_dashboard=False,
                 log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


TASK_RETRIES = 3  # attempts after the first when a task's worker or node dies


def _run_in_task(run, config: dict, run_path: str, resume: bool, threads: int) -> dict:
    """One attempt of a run. The folder was checked by whoever submitted the run; an attempt that finds
    a checkpoint there (an earlier attempt died after writing it) resumes from it."""
    import torch
    from ray.experimental.tqdm_ray import tqdm  # progress bars from inside tasks, drawn by the driver

    torch.set_num_threads(threads)
    folder = RunFolder.submitted(run_path)
    resume = resume or folder.file("checkpoint.pt").is_file()
    if resume:
        log.info("resuming %s from its checkpoint", run_path)
    return run(config, folder, resume, tqdm)


def submit_run(run, config: dict, run_path: str, *, resume: bool = False, num_cpus: float = 1, num_gpus: float = 0):
    """Start `run(config, RunFolder, resume, progress) -> summary` as a Ray task reserving `num_cpus` /
    `num_gpus` (and as many torch threads as CPUs); returns its ObjectRef (the summary). If the task's
    process or node dies, Ray runs it again (TASK_RETRIES times) and it continues from its checkpoint."""
    import ray

    task = ray.remote(_run_in_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=TASK_RETRIES)
    return task.remote(run, config, str(run_path), resume, max(1, int(num_cpus)))


def check_task_resources(device: str, num_cpus: float, num_gpus: float) -> None:
    """Refuse a training task (diffusion, KG) that asks for cuda without a GPU or more than the cluster has."""
    if device == "cuda" and num_gpus < 1:
        raise UserError("--device cuda needs a GPU for the task: add --num-gpus 1")
    require_resources({"CPU": num_cpus, "GPU": num_gpus}, "lower --num-cpus / --num-gpus or add nodes")


def require_resources(needs: dict[str, float], fix: str) -> None:
    """Refuse work the connected cluster can never schedule (Ray would leave it pending forever)."""
    import ray

    have = ray.cluster_resources()
    for kind, need in needs.items():
        if need > have.get(kind, 0.0):
            raise UserError(f"the Ray cluster has {have.get(kind, 0.0):g} {kind}s but this needs {need:g}: {fix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` only if the block succeeds,
    so readers never see half a file and a crash leaves the previous file in place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch_verified(urls: list[str], final: Path, verify: Callable[[Path], None]) -> None:
    """Download `final` from the first of `urls` whose file passes `verify` (which raises UserError
    on a bad file); the file appears only once verified, and a failed download leaves nothing."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        log.info("downloading %s", url)
        try:
            with atomic_path(final) as tmp:
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as src:
                    shutil.copyfileobj(src, out)
                verify(tmp)
            return
        except (OSError, UserError) as exc:
            log.warning("download of %s failed: %s", url, exc)
    raise UserError(f"could not download {final.name} from any mirror: check the network or copy the file to {final}")


def write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


class RunFolder:
    """A run's output folder: checked before any work, created when the work starts. With `resume`
    it must instead be an existing run folder holding `checkpoint`."""

    def __init__(self, path: str | Path, resume: bool = False, checkpoint: str = "checkpoint.pt"):
        self.path = Path(path)
        if resume:
            if not (self.path / checkpoint).is_file():
                raise UserError(f"nothing to resume in {self.path} (no {checkpoint}): check the run folder path")
        else:
            self._check()

    @classmethod
    def submitted(cls, path: str | Path) -> "RunFolder":
        """The folder of a run already submitted: its checks were made by the submitter, before any work."""
        folder = cls.__new__(cls)
        folder.path = Path(path)
        return folder

    def _check(self) -> None:
        if self.path.exists():
            if not self.path.is_dir():
                raise UserError(f"--out {self.path} is a file: choose a folder path")
            if any(self.path.iterdir()):
                raise UserError(f"--out {self.path} already holds files: choose a new folder so no result is overwritten")
        ancestor = self.path
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"--out {self.path} cannot be created ({ancestor} is not a writable folder): choose another path")

    def create(self) -> "RunFolder":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {self.path} cannot be created ({exc.strerror}): choose another path") from None
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj) -> None:
        write_json_atomic(self.file(name), obj)

    def trim_jsonl(self, name: str, keep: Callable[[dict], bool]) -> None:
        """Keep only the records `keep` accepts: on resume, what comes after the checkpoint is redone."""
        if self.file(name).exists():
            kept = [record for record in self.read_jsonl(name) if keep(record)]
            with atomic_path(self.file(name)) as tmp:
                tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def read_jsonl(self, name: str) -> list[dict]:
        """The records of a JSON-lines file, without a last line that a killed writer left unfinished."""
        path = self.file(name)
        lines = path.read_text().splitlines() if path.exists() else []
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise UserError(f"{path}:{number} is not a JSON record: the file was damaged") from None
        return records

    def append_jsonl(self, name: str, records: list[dict]) -> None:
        """Append records in one write, the file closed after it: a killed run keeps what it logged."""
        with open(self.file(name), "a") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))
