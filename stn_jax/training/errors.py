"""The error every entry point reports as one line with exit status 2."""


class ConfigError(ValueError):
  """A config that cannot run: a bad value, a setting the machine cannot honour, or a workdir holding another run."""
