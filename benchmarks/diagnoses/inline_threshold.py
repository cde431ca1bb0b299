"""How long a call carrying a float32 array takes between two actors on one machine, with Ray's default
inline limit (100 KiB: larger arrays go through the object store) and with the project's (INLINE_BYTES):
the measurement behind `start_local_ray`'s setting. Each setting runs in its own local Ray.

    python benchmarks/diagnoses/inline_threshold.py --reps 100
"""

import argparse
import json
import subprocess
import sys
import time

SIZES_KIB = (128, 256, 384, 512, 1024)


def round_trips(reps: int) -> dict[int, float]:
    """Milliseconds per call-and-wait, by array size, from one actor to another (the way stages send)."""
    import numpy as np
    import ray

    @ray.remote
    class Peer:
        def take(self, array) -> None:
            return None

        def call(self, other, kib: int, reps: int) -> float:
            array = np.zeros(kib * 256, np.float32)
            ray.get(other.take.remote(array))  # the first call sets up the connection
            start = time.perf_counter()
            for _ in range(reps):
                ray.get(other.take.remote(array))
            return 1000 * (time.perf_counter() - start) / reps

    sender, receiver = Peer.remote(), Peer.remote()
    return {kib: ray.get(sender.call.remote(receiver, kib, reps)) for kib in SIZES_KIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=100, help="calls timed per size (default 100)")
    parser.add_argument("--setting", choices=("default", "inline"), help=argparse.SUPPRESS)  # one child's setting
    args = parser.parse_args()
    if args.setting:
        import ray

        from dni_pipeline.core.ray_session import start_local_ray

        if args.setting == "default":
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        else:
            start_local_ray(2, include_dashboard=False, log_to_driver=False)
        print(json.dumps(round_trips(args.reps)))
        return
    rows = {}
    for setting in ("default", "inline", "default", "inline"):  # interleaved: the machine drifts
        out = subprocess.run([sys.executable, __file__, "--reps", str(args.reps), "--setting", setting],
                             check=True, capture_output=True, text=True).stdout
        rows.setdefault(setting, []).append(json.loads(out.strip().splitlines()[-1]))
    print("| array | default (ms) | inline (ms) |")
    print("|---|---|---|")
    for kib in SIZES_KIB:
        cells = [" / ".join(f"{run[str(kib)]:.2f}" for run in rows[s]) for s in ("default", "inline")]
        print(f"| {kib} KiB | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
