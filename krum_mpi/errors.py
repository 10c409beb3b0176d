"""User-facing errors.

Anything a user can get wrong (a config key, a CLI flag, a dataset file, a results file) raises a
subclass of ``KrumMPIError`` with a one-line message that names the problem and the fix. The CLI
prints it as ``krum-mpi: error: <message>`` and exits with status 2, without a traceback.
Pure numerical functions (aggregators, attacks) raise ``ValueError`` instead, as NumPy and
scikit-learn do; the CLI turns those into ``ConfigError`` where it validates a config.
"""


MAX_MESSAGE = 600   # characters: a message echoes values, but never a whole file or structure


class KrumMPIError(Exception):
    """Base class of errors caused by user input; the message is one line (whitespace runs become
    one space) of at most MAX_MESSAGE characters, whatever the message builder put in it."""

    def __init__(self, message="", *args):
        text = " ".join(str(message).split())
        if len(text) > MAX_MESSAGE:
            text = text[:MAX_MESSAGE - 3] + "..."
        super().__init__(text, *args)


class ConfigError(KrumMPIError):
    """A run config, study spec or CLI override is invalid."""


class DataError(KrumMPIError):
    """A dataset is missing, malformed or inconsistent with the config."""


class ResultsError(KrumMPIError):
    """A results file is missing, unreadable or from another schema version."""


class DeviceError(KrumMPIError):
    """A requested device (GPU) is not available."""
