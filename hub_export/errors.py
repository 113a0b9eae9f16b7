"""Errors that hub_export raises for bad input, and for outputs the OS refuses to write.

Every message names the file, key, dataset, input or value that is wrong, so that the
CLI can print it as it is (no traceback) and tests can pin it with `match=`.
"""


class HubExportError(Exception):
    """Base class: a problem with what the user gave us, not a bug in hub_export."""


class OptionsError(HubExportError, ValueError):
    """options.json is missing, unreadable, or a key in it is missing, unknown or invalid."""


class WeightsError(HubExportError, ValueError):
    """weights.hdf5 is missing, not HDF5, or a dataset is missing, extra or misshapen."""


class InputError(HubExportError, ValueError):
    """A model input (sentences, tokens, lengths, char ids, states) is malformed."""


class VocabError(HubExportError, ValueError):
    """A vocabulary file is missing, unreadable, not UTF-8, or breaks a rule its use needs."""


class EmbedError(HubExportError, ValueError):
    """A corpus, module, output or flag of `embed` is missing, unreadable or inconsistent."""


class DataError(HubExportError, ValueError):
    """Training or test files are missing, empty or unreadable."""


class TrainingError(HubExportError, ValueError):
    """A save folder, checkpoint or training setting that cannot be used."""


class WriteError(HubExportError):
    """The OS refused to write an output (full disk, quota, read-only, no permission)."""


class OutputExistsError(HubExportError):
    """An output is already there and overwriting was not asked for."""


class ServingReplyError(HubExportError, ValueError):
    """A TF Serving reply is an error, or is not shaped like a predict reply."""


class UsageError(Exception):
    """A command line that does not say what to do: a flag's form, a missing flag (the
    CLI prints it with the `--help` to read, exit status 1; not a HubExportError, which is
    bad input, exit status 2)."""
