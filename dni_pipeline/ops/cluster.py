"""A multi-node Ray cluster on one machine: a head node (no CPUs, the dashboard on localhost) plus N
worker nodes, each offering `stage_slot` resources so stage actors land one per worker.

Every node is a `ray start --block` process in its own process group, recorded in `cluster.json` in
the cluster folder; `stop` ends exactly those groups (never a machine-wide `ray stop`). Each node
gets its own free ports, so several raylets share the machine, and a bounded object store. Ray's
token authentication stays on: the head creates the token, the workers and every client on this
machine use it through RAY_AUTH_MODE=token.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.files import write_json_atomic
from dni_pipeline.core.ray_session import STAGE_SLOT, inline_system_config

__all__ = ["auth_env", "auth_headers", "start", "status", "stop"]

STATE_FILE = "cluster.json"
PER_NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-grpc-port",
                  "dashboard-agent-listen-port", "runtime-env-agent-port")


def _system_config_flags() -> list[str]:
    """The head's Ray settings (the worker nodes take them from it): those of a local Ray of this project."""
    config = inline_system_config()
    return ["--system-config", json.dumps(config)] if config else []


def auth_env() -> dict[str, str]:
    """The environment every process of a token-authenticated cluster on this machine runs with."""
    return {**os.environ, "RAY_AUTH_MODE": "token"}


def auth_headers() -> dict[str, str]:
    """HTTP headers for the job API of a token-authenticated cluster (JobSubmissionClient(headers=...)),
    from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, where Ray itself looks."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        if not path.is_file():
            raise UserError(f"no Ray auth token at {path}: copy the cluster's token there or set RAY_AUTH_TOKEN")
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _node_flags(node: int, ports: list[int], object_store_mb: int) -> list[str]:
    """Flags of node `node` (0 = head): its own ports from `ports` (all drawn at once, so distinct), its own
    range of 100 worker ports below the ephemeral range, a bounded object store."""
    mine = ports[node * len(PER_NODE_PORTS):(node + 1) * len(PER_NODE_PORTS)]
    flags = [arg for name, port in zip(PER_NODE_PORTS, mine) for arg in (f"--{name}", str(port))]
    worker_base = 20000 + 100 * node
    # Nodes on one machine would share Ray's session folder and its unix sockets: each gets its own
    # (short, under the 107-byte socket path limit).
    flags += ["--temp-dir", str(Path(tempfile.gettempdir()) / f"dni-{ports[0]}-{node}")]
    return [*flags, "--min-worker-port", str(worker_base), "--max-worker-port", str(worker_base + 99),
            "--node-ip-address", "127.0.0.1", "--object-store-memory", str(object_store_mb * 1024 * 1024),
            "--disable-usage-stats", "--block"]


def _launch(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        # Ray's CLI through this interpreter: works in a venv that is not activated.
        return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args], env=auth_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str) -> int | None:
    """Alive nodes as the cluster itself reports them, or None while it does not answer."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    try:
        result = subprocess.run([sys.executable, "-c", code, address], env=auth_env(), capture_output=True,
                                text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    lines = result.stdout.split()
    return int(lines[-1]) if result.returncode == 0 and lines and lines[-1].isdigit() else None


def _read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise UserError(f"no local cluster recorded in {folder} (no {STATE_FILE}): start one with "
                        f"`dni-pipeline cluster start --dir {folder}`")
    return json.loads(path.read_text())


def _group_alive(pid: int) -> bool:
    """Whether any process of the group led by `pid` still runs (a leader that is our own exited child
    is reaped first, so it does not linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def start(folder: Path, *, workers: int = 2, cpus_per_worker: float = 1, gpus_per_worker: int = 0,
          stage_slots_per_worker: int = 1, port: int = 0, dashboard_port: int = 0, object_store_mb: int = 256,
          timeout: float = 120) -> dict:
    """Start the head and `workers` worker nodes; returns the recorded state (address, dashboard, pids)."""
    if workers < 1 or cpus_per_worker <= 0 or stage_slots_per_worker < 1 or object_store_mb < 80:
        raise UserError("need --workers >= 1, --cpus-per-worker > 0, --stage-slots >= 1 and --object-store-mb >= 80")
    if (folder / STATE_FILE).is_file() and any(_group_alive(p) for p in _read_state(folder)["pids"]):
        raise UserError(f"a local cluster recorded in {folder} is still running: stop it first "
                        f"(`dni-pipeline cluster stop --dir {folder}`)")
    folder.mkdir(parents=True, exist_ok=True)
    ports = _free_ports(3 + (1 + workers) * len(PER_NODE_PORTS))
    port, dashboard_port = port or ports.pop(), dashboard_port or ports.pop()
    client_port = ports.pop()
    address = f"127.0.0.1:{port}"
    state = {"address": address, "dashboard": f"http://127.0.0.1:{dashboard_port}", "pids": [], "workers": workers,
             "stage_slots": workers * stage_slots_per_worker}
    launched: list[subprocess.Popen] = []
    try:
        launched.append(_launch([
            "--head", "--port", str(port), "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--ray-client-server-port",
            str(client_port), *_node_flags(0, ports, object_store_mb), *_system_config_flags()], folder / "head.log"))
        state["pids"] = [p.pid for p in launched]
        write_json_atomic(folder / STATE_FILE, state)
        _wait_for_nodes(state["address"], launched, 1, timeout, folder / "head.log")
        resources = json.dumps({STAGE_SLOT: stage_slots_per_worker})
        for i in range(workers):
            launched.append(_launch([
                "--address", address, "--num-cpus", f"{cpus_per_worker:g}", "--num-gpus", str(gpus_per_worker),
                "--resources", resources, *_node_flags(1 + i, ports, object_store_mb)], folder / f"worker-{i}.log"))
            state["pids"] = [p.pid for p in launched]
            write_json_atomic(folder / STATE_FILE, state)
        _wait_for_nodes(state["address"], launched, 1 + workers, timeout, folder / "worker-0.log")
    except BaseException:
        stop(folder)
        raise
    return state


def _wait_for_nodes(address: str, launched: list[subprocess.Popen], count: int, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in launched):
            raise UserError(f"a Ray node exited while starting: see {log} and the other logs beside it")
        if (_alive_nodes(address) or 0) >= count:
            return
        time.sleep(1)
    raise UserError(f"the local cluster did not reach {count} nodes within {timeout:g} s: see {log}")


def status(folder: Path) -> dict:
    state = _read_state(folder)
    running = [p for p in state["pids"] if _group_alive(p)]
    return {**state, "running_processes": len(running), "alive_nodes": _alive_nodes(state["address"]) if running else 0}


def stop(folder: Path, grace: float = 10) -> int:
    """End the process groups this folder recorded (SIGTERM, then SIGKILL after `grace` s); returns
    how many were running."""
    state = _read_state(folder)
    running = [p for p in state["pids"] if _group_alive(p)]
    for pid in reversed(running):  # workers first, the head last
        os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_group_alive(p) for p in running):
        time.sleep(0.2)
    for pid in running:
        if _group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + grace
    while time.time() < deadline and any(_group_alive(p) for p in running):
        time.sleep(0.2)
    (folder / STATE_FILE).unlink()
    return len(running)
