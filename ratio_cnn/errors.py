class RatioCnnError(Exception):
    """A problem the user can fix: bad input, missing data, unreachable storage.

    The message names the file, row, object or value and says what to do; the CLI
    prints it as one line and exits non-zero.
    """


class StorageUnavailable(RatioCnnError):
    """Object storage could not be reached or answered with a server error: worth a retry."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, Kubernetes): stops a job the way Ctrl-C does, and says so."""
