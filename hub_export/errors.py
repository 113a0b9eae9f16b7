"""Errors that hub_export raises for bad input.

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
