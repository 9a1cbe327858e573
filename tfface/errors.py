"""The error type for bad user input (config keys, names, paths); the CLIs print it as one line."""


class ConfigError(ValueError):
    """A problem in what the user gave (a config key, a name, a path); the message names it."""
