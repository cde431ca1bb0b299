"""The one error type a user can fix: the CLI prints its message on one line and exits with code 2."""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input (config, flags, data files, cluster address); the message names the problem and the fix."""
