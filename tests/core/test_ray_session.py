"""The local Ray this project starts passes arrays up to INLINE_BYTES inside the call, not through the store."""

import time

import numpy as np

from dni_pipeline.core.ray_session import INLINE_BYTES, inline_system_config


def _in_object_store(ray, num_bytes: int, wait_s: float = 10.0) -> bool:
    """Whether a task's returned array of `num_bytes` landed in the object store (else it came back inline).

    The owner may learn a stored object's node after `ray.get` returns (a CI run saw none at once), so this
    waits up to `wait_s` for one; an inline object never has one.
    """

    @ray.remote
    def make():
        return np.zeros(num_bytes // 4, np.float32)

    ref = make.remote()
    ray.get(ref)
    deadline = time.monotonic() + wait_s
    while not ray.experimental.get_object_locations([ref])[ref]["node_ids"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_bench_micro_batch_passes_inline(ray_session):
    assert _in_object_store(ray_session, 2 * INLINE_BYTES)
    assert not _in_object_store(ray_session, 256 * 1024, wait_s=2.0)  # the bench MLP's micro-batch activation


def test_users_own_setting_wins(monkeypatch):
    assert inline_system_config() == {"max_direct_call_object_size": INLINE_BYTES}
    monkeypatch.setenv("RAY_max_direct_call_object_size", "102400")
    assert inline_system_config() == {}

