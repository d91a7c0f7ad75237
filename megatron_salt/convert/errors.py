"""The one error type of the converters: printed as one line by the CLI."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file and field."""
