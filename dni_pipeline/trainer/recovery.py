"""How the driver notices a lost stage and brings the run back.

Every stage saves its state at a checkpoint step (the pipeline drained, so the set is consistent).
A stage actor that dies, or answers no ping for `stall_timeout`, is restarted by Ray (a frozen one is
first killed by PID on its node, since Ray's own kill cannot reach a process that does not answer);
then every stage goes back to the last checkpoint in a new *generation*: messages of the old one are
dropped, so the steps since the checkpoint are sent again and no step reaches a stage's weights
twice (each stage also checks this itself).
"""

import logging
import os
import signal
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dni_pipeline.core.errors import JobFailed

__all__ = ["PipelineError", "StageLost", "StageWatch", "get_each", "kill_by_pid", "recover", "restore"]

log = logging.getLogger("dni_pipeline.trainer")

RESTART_SECONDS = 180.0  # how long a lost stage may take to come back (a lost node is noticed in ~30 s)


class PipelineError(JobFailed):
    """A stage failed or stopped making progress; the message names the stage."""


class StageLost(Exception):
    """A stage actor died or stopped answering: the run goes back to its last checkpoint."""

    def __init__(self, stage: int, reason: str):
        super().__init__(f"stage {stage} lost: {reason}")
        self.stage, self.reason = stage, reason

    @classmethod
    def died(cls, stage: int, error: Exception) -> "StageLost":
        return cls(stage, f"its actor died ({type(error).__name__})")


def get_each(refs: list) -> list:
    """ray.get of one call per stage, naming the stage whose actor died."""
    results = []
    for i, ref in enumerate(refs):
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayActorError as exc:
            raise StageLost.died(i, exc) from None
    return results


def _sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def kill_by_pid(placement: dict) -> bool:
    """SIGKILL a stage's process from a small task pinned to its node (a frozen process does not answer
    Ray's own kill, which then retries for minutes); Ray sees the process die and restarts the actor.
    Returns whether the process was there to kill."""
    task = ray.remote(_sigkill).options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        placement["node_id"], soft=False))
    return ray.get(task.remote(placement["pid"]), timeout=60)


class StageWatch:
    """A ping kept out to every stage while the driver waits: a failed ping is a dead stage, one answered
    by another generation a restarted stage, one unanswered for `stall_timeout` a stuck stage."""

    def __init__(self, stages: list, placement: list[dict], stall_timeout: float):
        self.stages, self.placement, self.stall_timeout = stages, placement, stall_timeout
        self.pings = [stage.ping.remote() for stage in stages]
        self.sent = [time.monotonic()] * len(stages)

    def check(self, generation: int) -> None:
        """Raise StageLost for a stage that died, was restarted, or is stuck (that one is killed first)."""
        now = time.monotonic()
        for i, ref in enumerate(self.pings):
            if ray.wait([ref], timeout=0)[0]:
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise StageLost.died(i, exc) from None
                if answer["generation"] != generation:  # the ping reached a restarted actor
                    raise StageLost(i, f"its actor was restarted (now pid {answer['pid']})")
                self.pings[i], self.sent[i] = self.stages[i].ping.remote(), now
            elif now - self.sent[i] > self.stall_timeout:
                pid = self.placement[i]["pid"]
                try:
                    killed = kill_by_pid(self.placement[i])
                except (ray.exceptions.RayError, TimeoutError) as exc:  # its node is gone: Ray restarts it elsewhere
                    log.warning("could not kill stage %d's process %d on its node (%s); asking Ray", i, pid, exc)
                    ray.kill(self.stages[i], no_restart=False)
                    killed = False
                raise StageLost(i, f"it answered no ping for {self.stall_timeout:g} s"
                                   + (f" (process {pid} killed)" if killed else ""))


def restore(driver, checkpoint: dict) -> None:
    """Every stage of `driver` back to `checkpoint` in a new generation; returns once all hold it."""
    driver.generation += 1
    ray.get(driver.ledger.reset.remote(driver.generation, checkpoint["ledger_counts"]))
    deadline = time.monotonic() + RESTART_SECONDS
    while True:  # a stage still restarting (or lost meanwhile) fails its call: try the whole set again
        try:
            driver.connect()
            get_each([stage.restore.remote(driver.generation, f["file"], f["sha256"])
                      for stage, f in zip(driver.stages, checkpoint["stages"])])
            break
        except (StageLost, ray.exceptions.RayActorError) as exc:
            if time.monotonic() > deadline:
                raise PipelineError(f"the stages did not all come back within {RESTART_SECONDS:g} s ({exc}): "
                                    "the cluster has no room left for them (add a node)") from None
            time.sleep(0.5)
    counts = checkpoint["ledger_counts"]
    driver.next_step, driver.last_counts = checkpoint["step"], None
    driver.probes, driver.evaluated_batches = counts["probe"][0], counts["eval"][-1]
    del driver.events[driver.checkpoint_events:]
    driver.placement = ray.get([stage.placement.remote() for stage in driver.stages])
    driver.watch = StageWatch(driver.stages, driver.placement, driver.cfg.stall_timeout)


def recover(driver, lost: StageLost, checkpoint: dict) -> dict:
    """Bring a lost stage back (Ray restarts its actor) and every stage to the checkpoint; return what happened."""
    detected_at, started, at_step = time.time(), time.monotonic(), max((driver.last_counts or {}).get("update", [0]))
    driver.restarts[lost.stage] += 1
    if driver.restarts[lost.stage] > driver.cfg.max_restarts:
        raise PipelineError(f"{lost}, and --max-restarts {driver.cfg.max_restarts} allows no more restarts")
    node_before = driver.placement[lost.stage]["node_id"]
    log.warning("%s near step %d: restarting it and going back to the checkpoint of step %d",
                lost, at_step, checkpoint["step"])
    restore(driver, checkpoint)
    record = {"stage": lost.stage, "reason": lost.reason, "detected_at": round(detected_at, 3), "detected_near_step": at_step,
              "rolled_back_to": checkpoint["step"], "restore_seconds": round(time.monotonic() - started, 3),
              "node_before": node_before, "node_after": driver.placement[lost.stage]["node_id"]}
    log.warning("stage %d is back on node %s after %.1f s; steps from %d are sent again", lost.stage,
                record["node_after"][:12], record["restore_seconds"], checkpoint["step"])
    return record
