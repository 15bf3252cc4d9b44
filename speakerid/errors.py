"""Typed errors for every failure a user can cause or meet.

The library never prints or exits: it raises one of these. Each message is a single line
meant for humans; the CLI prints ``error: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations


class SpeakerIDError(Exception):
    """Base class of all speakerid errors."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


# --- audio -------------------------------------------------------------------------------
class AudioError(SpeakerIDError):
    """The audio given cannot be turned into an embedding."""


class AudioFileNotFoundError(AudioError):
    pass


class AudioDecodeError(AudioError):
    """Unreadable, corrupt or non-audio data."""


class EmptyAudioError(AudioError):
    pass


class InvalidSamplesError(AudioError):
    """NaN or infinite samples."""


class AudioTooShortError(AudioError):
    pass


class SilentAudioError(AudioError):
    pass


class AudioQualityError(AudioError):
    """Too little speech to enroll reliably (override with --force)."""


# --- models ------------------------------------------------------------------------------
class ModelError(SpeakerIDError):
    """A model cannot be found, fetched or loaded."""


class UnknownModelError(ModelError):
    pass


class ModelNotInstalledError(ModelError):
    pass


class ChecksumMismatchError(ModelError):
    pass


class DownloadError(ModelError):
    pass


class InvalidCheckpointError(ModelError):
    """The file is not an ERes2NetV2 checkpoint."""


class DeviceError(ModelError):
    """The requested compute device is not available."""


class OnnxUnavailableError(ModelError):
    """The onnx backend was requested but its optional packages are not installed."""


class VadUnavailableError(ModelError):
    """The Silero VAD model (silero-vad package) or onnxruntime is not installed."""


# --- registry ----------------------------------------------------------------------------
class RegistryError(SpeakerIDError):
    """The speaker registry refused an operation."""


class SpeakerNotFoundError(RegistryError):
    pass


class SpeakerExistsError(RegistryError):
    pass


class InvalidNameError(RegistryError):
    pass


class EmptyRegistryError(RegistryError):
    pass


class RegistryNotFoundError(RegistryError):
    """A read-only command was pointed at a registry that does not exist (nothing is created)."""


class ModelMismatchError(RegistryError):
    """Embeddings from different models are not comparable."""


class DuplicateEnrollmentError(RegistryError):
    pass


class RegistryCorruptError(RegistryError):
    pass


class RegistryLockedError(RegistryError):
    pass


class InvalidInputError(SpeakerIDError):
    """Arguments that make no sense (bad threshold, bad file format of an import, ...)."""


class BackupError(InvalidInputError):
    """A backup folder that is missing, damaged or not a speakerid backup."""


# --- service (speakerid serve) and its client ----------------------------------------------
class LimitExceededError(InvalidInputError):
    """A request above the server's limits (upload size, audio seconds, files per request)."""


class ServerError(SpeakerIDError):
    """A speakerid server could not be reached, or answered something that is not speakerid's."""


class NotReadyError(ServerError):
    """The server is starting or stopping, or cannot reach its registry (retry later)."""


class EmbedderUnavailableError(NotReadyError):
    """The server's embedding worker has stopped, or did not answer within its deadline
    (``ServerSettings.embed_timeout``): the request is answered 503 instead of waiting."""


class AuthenticationError(ServerError):
    """No API key, or one the server does not know (revoked or mistyped)."""


class PermissionDeniedError(AuthenticationError):
    """The API key is valid but its scope does not allow the operation."""


class KeyExistsError(RegistryError):
    """An API key with this name already exists."""


class KeyNotFoundError(RegistryError):
    """No API key with this name."""
