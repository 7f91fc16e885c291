"""Errors whose message is one sentence a user can act on."""


class AttnvizError(Exception):
    """Base: ``str(e)`` is shown to the user as is."""

    exit_code = 1


class UsageError(AttnvizError, ValueError):
    """A bad method name, parameter, target or option (CLI exit 2)."""

    exit_code = 2


class ModelUnavailable(AttnvizError):
    """Offline and not cached, unknown id, unsupported family or no safetensors (CLI exit 4)."""

    exit_code = 4


class OutDirBusy(AttnvizError):
    """Another batch run holds the output folder's lock (CLI exit 75, sysexits' EX_TEMPFAIL: try again later)."""

    exit_code = 75
