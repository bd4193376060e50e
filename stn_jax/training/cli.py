"""What the command-line entry points share: one-line errors with exit status 2, flag parsing that reports bad
config flags that way, and quiet orbax logs. Defines no flags, so any entry point can import it."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from absl import flags

from stn_jax.training import config_lib

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


def _config_spec(argv: list[str]) -> str | None:
  """The value of --config ('path.py[:arg]') on a command line, given as --config=v or --config v."""
  for i, arg in enumerate(argv):
    if re.fullmatch(r"--?config=.*", arg):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def unknown_key(argv: list[str]) -> str | None:
  """The error of the first --config.a.b=v flag naming no field of the config file's config, as one line.

  ml_collections says "Did you mean" only for a close match in the same section, and with none raises a bare
  KeyError('b'); `config_lib.field_error` names the section the key was looked for in, either way.

  Args:
    argv: the command line.

  Returns:
    '--config.a.b: config.a has no field 'b' (...)'; None when every override names a field (or the file fails).
  """
  spec = _config_spec(argv)
  overrides = [m.group(1) for a in argv if (m := re.match(r"--?(?:no)?config\.([^=\[]+)(?:=|$)", a))]
  if spec is None or not overrides:
    return None
  try:
    config = config_lib.load(spec)
  except Exception:  # the file's own error: one_line reports it
    return None
  for dotted in overrides:
    if message := config_lib.field_error(config, dotted):
      return f"--config.{dotted}: {message}"
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
    config_path = (_config_spec(argv) or "").split(":")[0]
    if config_path and not Path(config_path).is_file():
      sys.stderr.write(f"error: --config: no such file {config_path!r}\n")
    else:
      sys.stderr.write(f"error: {unknown_key(argv) or one_line(e)}\n")
    sys.exit(USAGE_ERROR)


def quiet_orbax() -> None:
  """Keeps orbax's and JAX's INFO chatter out of the default log.

  orbax logs every step of every save and restore at INFO (its warnings are kept); JAX logs its probing of absent
  backends ("Unable to initialize backend 'tpu'") at INFO too, which a newcomer reads as an error.
  """
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or "orbax" not in record.pathname)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
