"""Errors that the command line prints as a plain message, without a traceback."""


class RmtrainError(Exception):
    """Base class: something the user can fix (a config, a file, a record)."""


class ConfigError(RmtrainError, ValueError):
    """A config file, a config name or a --cfg-options key is wrong."""


class RecordFieldError(RmtrainError):
    """A map function or a check found a record field it cannot use.

    Raised without knowing the file or the record index; the data set builder adds both.
    """

    def __init__(self, field: str, message: str):
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"field '{self.field}': {self.message}"


class DataError(RmtrainError):
    """A data set record is unusable: names the file, the record index and the field."""

    def __init__(self, source: str, index: int, field: str, message: str):
        # All four go to Exception's args so the error survives pickling out of worker processes.
        super().__init__(source, index, field, message)
        self.source = source
        self.index = index
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.source}, record {self.index}, field '{self.field}': {self.message}"


class EvaluationError(RmtrainError):
    """A reward model cannot be evaluated: nothing to score, or a model without a score head."""


class CheckpointError(RmtrainError):
    """A checkpoint cannot be read, or does not fit the model the config builds."""


class TrainingError(RmtrainError):
    """Training stopped because continuing could not produce a useful model (e.g. no gradient at all)."""
