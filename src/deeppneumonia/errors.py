"""Error types. Every data problem says what is wrong, where (file and row) and, when it can, how to fix it."""

from __future__ import annotations


class DeepPneumoniaError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(DeepPneumoniaError):
    """Something in the user's data (a file, a CSV row, a box) cannot be used."""


class ImageReadError(DataError):
    """An image file could not be decoded (missing, empty, truncated, corrupt, unsupported, too large)."""


class NotAnImageError(ImageReadError):
    """The content is not a JPEG, PNG or DICOM file (judged from its magic bytes, never its name)."""


class ImageTooLargeError(ImageReadError):
    """The header declares dimensions above the guards (decompression-bomb protection); nothing was decoded."""


class UnsupportedTransferSyntaxError(ImageReadError):
    """A DICOM file is compressed with a transfer syntax for which no decoder plugin is installed."""


class ConfigError(DeepPneumoniaError):
    """A configuration value or override is unknown or has the wrong type."""


class CheckpointError(DeepPneumoniaError):
    """A checkpoint is missing, incomplete or does not match what is asked of it."""
