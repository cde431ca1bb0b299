"""Shared fixtures: one local Ray for the whole session, and the offline data mirror beside the repo."""

import os
import tempfile
from pathlib import Path

import pytest
from helpers import SHARED_DATA

# Downloads and trained feature classifiers go to a throwaway cache, in this process and in Ray's workers.
os.environ["DNI_PIPELINE_CACHE"] = tempfile.mkdtemp(prefix="dni-pipeline-cache-")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (4 logical CPUs, so 3-4 one-CPU stages fit on a 2-core machine, and one logical GPU, so
    tests can check what tasks reserve; nothing here runs CUDA), shut down at the end."""
    import ray

    from dni_pipeline.core.ray_session import start_local_ray

    start_local_ray(4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = SHARED_DATA / "mnist"
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST mirror not found at {folder}")
    return folder
