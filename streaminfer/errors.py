"""Every error streaminfer raises on purpose derives from :class:`StreaminferError`.

    StreaminferError
    ├── ConfigError          bad settings or a bad app definition: names the field
    ├── RecordError          one input record cannot be used: it goes to the dead-letter topic
    │   ├── DecodeError      the bytes are not a record of the schema (wire format, Avro body)
    │   └── InvalidRecord    the record decoded but a field's value is unusable
    ├── ModelError           a model or checkpoint cannot be built, loaded or run
    │   ├── CheckpointError  a checkpoint store cannot save or load
    │   └── RegistryError    a registered model version is missing, corrupt or does not fit
    └── SinkError            a write to Redis, the predictions topic or the DLQ failed
        ├── DeliveryError    Kafka did not acknowledge records
        └── DeadLetterError  the dead-letter topic did not take a rejected record

Subclasses keep the builtin base they had (``ValueError``, ``RuntimeError``) so that code
catching those still works.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DeadLetterError",
    "DecodeError",
    "DeliveryError",
    "InvalidRecord",
    "ModelError",
    "RecordError",
    "RegistryError",
    "SinkError",
    "StreaminferError",
]


class StreaminferError(Exception):
    """The root: ``except streaminfer.StreaminferError`` catches every deliberate error."""


class ConfigError(StreaminferError, ValueError):
    """Invalid configuration or app definition; the message names the field and what was
    expected."""


class RecordError(StreaminferError, ValueError):
    """One record cannot be processed; the worker routes it to the dead-letter topic."""


class DecodeError(RecordError):
    """The bytes are not a record of the expected schema (the message says why)."""


class InvalidRecord(RecordError):
    """A decoded record whose field ``field`` is missing or unusable (``field`` is None when
    the record as a whole is)."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class ModelError(StreaminferError, RuntimeError):
    """A model, model file or checkpoint cannot be built, loaded or run."""


class CheckpointError(ModelError):
    """A checkpoint store could not save or load a checkpoint."""


class RegistryError(ModelError):
    """A model registry cannot find, verify or load a version (the message names which)."""


class SinkError(StreaminferError, RuntimeError):
    """A sink write failed; the batch is retried and its offsets are not committed."""


class DeliveryError(SinkError):
    """Kafka did not acknowledge produced records."""


class DeadLetterError(SinkError):
    """A rejected record could not be written to the dead-letter topic."""
