"""What the command-line entry points share: one-line errors with exit status 2, flag parsing that reports bad
config flags that way, and quiet orbax logs. Defines no flags, so any entry point can import it."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from absl import flags

USAGE_ERROR = 2  # exit status of a bad command line, config or workdir


def one_line(error: BaseException) -> str:
  """An exception as one readable line.

  ml_collections reports a misspelt key quoted on two lines and an error in a config file with its whole traceback;
  this keeps the message.

  Args:
    error: the exception.

  Returns:
    The line.
  """
  text = str(error).replace("\\'", "'").replace("\\n", "\n")
  if "Traceback (most recent call last)" in text:  # the last line is the config file's own error
    text = [line for line in text.splitlines() if line.strip()][-1]
  if match := re.search(r"'([\w.]+)'.*Did you mean \"([\w.]+)\"", text, re.S):
    return f"--config: no field {match.group(1)!r} (did you mean {match.group(2)!r}?)"
  if match := re.match(r"(?:ValueError|TypeError|KeyError|ConfigError): (.*)", text.strip(), re.S):
    text = match.group(1)  # a config file's own error, its class name left off
  return re.sub(r"\s+", " ", text).strip()


def unknown_key(error: BaseException, argv: list[str]) -> str | None:
  """The error of a --config.a.b=v flag naming no field, when ml_collections raised KeyError('b') (nothing close to it).

  Args:
    error: the exception of flag parsing.
    argv: the command line.

  Returns:
    The flag, the key and the section it was looked for in, as one line; None for another error.
  """
  key = str(error).strip("'\"")
  if not isinstance(error, KeyError) and not re.fullmatch(r"'[\w]+'", str(error).strip('"')):
    return None
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      path = arg[len("--config.") : arg.index("=")].split(".")
      if key in path:
        section = ".".join(["config", *path[: path.index(key)]])
        return (
          f"--config.{'.'.join(path)}: {section} has no field {key!r} (every field: python -m stn_jax.main "
          "--config=... --list)"
        )
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, every error (a misspelt key, a bad value, a missing or failing config file) one line.

  Args:
    argv: the command line.

  Returns:
    The arguments absl leaves (the program's name and positional arguments); on an error, exits with status 2.
  """
  try:
    rest = flags.FLAGS(argv)
    if flags.FLAGS["config"].present:
      flags.FLAGS.config.get("version")  # ml_collections loads the file lazily: surface its errors here
    return rest
  except Exception as e:
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "").split(":")[0]
    if config_path and not Path(config_path).is_file():
      sys.stderr.write(f"error: --config: no such file {config_path!r}\n")
    else:
      sys.stderr.write(f"error: {unknown_key(e, argv) or one_line(e)}\n")
    sys.exit(USAGE_ERROR)


def quiet_orbax() -> None:
  """Keeps orbax's and JAX's INFO chatter out of the default log.

  orbax logs every step of every save and restore at INFO (its warnings are kept); JAX logs its probing of absent
  backends ("Unable to initialize backend 'tpu'") at INFO too, which a newcomer reads as an error.
  """
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or "orbax" not in record.pathname)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
