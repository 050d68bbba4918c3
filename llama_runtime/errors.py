"""Every error llama-runtime raises.

One base class, :class:`LlamaRuntimeError`; each subclass also derives from the builtin it
resembles so callers can catch either. Messages say what was tried, what was found and what
to do next.
"""

from __future__ import annotations


class LlamaRuntimeError(Exception):
    """Base class of every llama-runtime error."""


class ConfigError(LlamaRuntimeError, ValueError):
    """A setting (environment variable, ``-C`` option, argument) has a bad value."""


class ManifestError(LlamaRuntimeError, ValueError):
    """A manifest, lock or ``variant.json`` is malformed or of an unknown schema."""


class NoCompatibleVariantError(LlamaRuntimeError, LookupError):
    """No variant of the manifest fits the machine and the requested settings."""


class IntegrityError(LlamaRuntimeError, ValueError):
    """A downloaded or cached file does not match the sha256 the lock trusts."""


class UnsafeArchiveError(LlamaRuntimeError, ValueError):
    """An archive holds members that would escape the folder it is unpacked into."""


class DownloadError(LlamaRuntimeError, OSError):
    """A file could not be fetched from the hub or the mirror.

    ``status`` and ``code``: the HTTP status and ``X-Error-Code`` of the hub's last answer, when
    it gave one (None after a timeout or a reset), so that a hint can follow the error it fits.
    """

    status: int | None = None
    code: str | None = None


class OfflineError(DownloadError):
    """A download was needed while offline mode forbids opening a connection."""


class CacheError(LlamaRuntimeError, OSError):
    """The cache folder cannot be read or written."""


class LibraryLoadError(LlamaRuntimeError, OSError):
    """A llama.cpp shared library could not be loaded or lacks the symbols we need."""


class LibraryNotFoundError(LlamaRuntimeError, LookupError):
    """Every step of the load chain was tried and none produced a library."""


class NoReleaseError(ManifestError, LibraryNotFoundError):
    """No lock in the package and no binary release named (LLAMA_RUNTIME_REPO/REVISION)."""


class ModelError(LlamaRuntimeError, ValueError):
    """A model file is missing, not GGUF, truncated, or refused by llama.cpp."""


class QuantizeError(LlamaRuntimeError, ValueError):
    """A quantization that cannot run (unknown type, bad output path) or that llama.cpp refused."""


class PromptError(LlamaRuntimeError, ValueError):
    """A prompt or chat message that cannot be given to llama.cpp (not UTF-8, NUL byte ...)."""


class ChatTemplateError(LlamaRuntimeError, ValueError):
    """The model has no chat template, or llama.cpp does not support the one it has."""


class GenerationError(LlamaRuntimeError, RuntimeError):
    """llama.cpp failed while evaluating a prompt or sampling."""


class PublishError(LlamaRuntimeError, RuntimeError):
    """Packing or uploading the release binaries failed."""


class QualificationError(PublishError):
    """A variant crashed or gave wrong tokens in its qualification: it is not published."""
