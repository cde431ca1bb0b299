"""Helpers shared by test modules."""

import contextlib
import functools
import http.server
import threading
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # the offline mirror beside the repo


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic, one big-endian size per dimension, then the uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def kill_a_ray_train_worker() -> int:
    """SIGKILL one live Ray Train worker process (found by its process title); returns its PID."""
    import os
    import signal

    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"RayTrainWorker" in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
                return int(proc.name)
        except OSError:  # the process ended while we looked
            continue
    raise AssertionError("no Ray Train worker process found")


def task_process(function: str) -> int:
    """The pid of the Ray worker running a task of `function` (Ray titles it `ray::function`)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(f"ray::{function}".encode()):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no Ray worker runs {function}")


def wired_by_calls(stages: list, i: int):
    """Stage i's `send`: each message handled by its neighbour in `stages` the moment it is sent (no Ray)."""
    def send(message):
        if message.kind == "forward":
            stages[i + 1].forward(message.step, message.micro, message.tensor, message.labels)
        else:
            stages[i - 1].backward(message.step, message.micro, message.tensor)
    return send


def kill_task_after_epoch(checkpoint: Path, epoch: int, timeout: float = 120.0) -> None:
    """SIGKILL the Ray worker of the job task (`_attempt`) once its checkpoint has passed `epoch`."""
    import os
    import signal
    import time

    import torch

    deadline = time.time() + timeout
    while not checkpoint.is_file() or torch.load(checkpoint, weights_only=True)["state"]["epoch"] < epoch:
        assert time.time() < deadline, f"{checkpoint} did not reach epoch {epoch} in {timeout:g} s"
        time.sleep(0.05)
    os.kill(task_process("_attempt"), signal.SIGKILL)


class CutShortHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, but sends only the first `cut` bytes of each file under its full Content-Length."""

    cut = 1000

    def copyfile(self, source, outputfile):
        outputfile.write(source.read(self.cut))


@contextlib.contextmanager
def http_mirror(folder, handler=http.server.SimpleHTTPRequestHandler):
    """A mirror on 127.0.0.1 serving `folder`, as MNIST's mirrors serve its files; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.RequestHandlerClass.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
