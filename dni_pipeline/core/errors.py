"""The errors the command line turns into exit codes: a fixable input (2), a failed job (1), a job
stopped by the user with a checkpoint to resume from (130)."""

__all__ = ["JobFailed", "JobInterrupted", "UserError"]


class UserError(Exception):
    """Bad input (config, flags, data files, cluster address); the message names the problem and the fix."""


class JobFailed(RuntimeError):
    """A job started and then failed (a stage died for good, a NaN); the message says where."""


class JobInterrupted(Exception):
    """Ctrl-C ended a job cleanly; the message says how to resume it."""
