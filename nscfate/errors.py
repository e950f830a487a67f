"""Typed errors. ``InputError`` and its subclasses are the caller's fault (bad image, unknown model,
bad config); every entry point turns them into a clear message and keeps running. Anything else that
escapes is a bug or an infrastructure failure.

Each class has a stable ``code`` string so web, worker and CLI callers can tell errors apart without
parsing messages.
"""


class NscFateError(Exception):
    """Base class of all errors raised by nscfate."""

    code = "error"


class InputError(NscFateError, ValueError):
    """The input given by the caller is not acceptable. The message says what was wrong and what is
    accepted."""

    code = "bad_input"


class ImageError(InputError):
    """An image could not be used."""

    code = "bad_image"


class EmptyImageError(ImageError):
    code = "empty"


class NotAnImageError(ImageError):
    code = "not_an_image"


class UnsupportedFormatError(ImageError):
    code = "unsupported_format"


class CorruptImageError(ImageError):
    code = "corrupt"


class TooManyBytesError(ImageError):
    code = "too_many_bytes"


class TooManyPixelsError(ImageError):
    code = "too_many_pixels"


class ImageTooSmallError(ImageError):
    code = "too_small"


class TooManyChannelsError(ImageError):
    code = "too_many_channels"


class InvalidPixelValuesError(ImageError):
    """NaN or infinite values, or an image with no usable intensity range."""

    code = "invalid_values"


class DatasetError(InputError):
    """A dataset directory or manifest cannot be read as asked."""

    code = "bad_dataset"


class MarkerChannelError(DatasetError, ImageError):
    """A fluorescence marker channel was asked for as model input (it leaks the label): in a dataset, or
    as an image to classify (its file name says so)."""

    code = "marker_channel"


class ConfigError(InputError):
    """A configuration value is invalid."""

    code = "bad_config"


class UnknownModelError(InputError):
    """No model with this name/version is known."""

    code = "unknown_model"


class ModelError(NscFateError):
    """A model directory is broken (missing files, checksum mismatch, golden pair fails)."""

    code = "model_error"
