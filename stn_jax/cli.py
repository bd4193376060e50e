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
  """An exception as one readable line: ml_collections reports a misspelt key quoted on two lines and an error in a
  config file with its whole traceback; keep the message."""
  text = str(error).replace("\\'", "'").replace("\\n", "\n")
  if "Traceback (most recent call last)" in text:  # the last line is the config file's own error
    text = [line for line in text.splitlines() if line.strip()][-1]
  if match := re.search(r"'([\w.]+)'.*Did you mean \"([\w.]+)\"", text, re.S):
    return f"--config: no field {match.group(1)!r} (did you mean {match.group(2)!r}?)"
  return re.sub(r"\s+", " ", text).strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error (a misspelt key, a bad value, a missing or failing config file) reported
  as one line and exit status 2."""
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
      sys.stderr.write(f"error: {one_line(e)}\n")
    sys.exit(USAGE_ERROR)


def quiet_orbax() -> None:
  """orbax logs every step of every save and restore at INFO; keep its warnings only."""
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or "orbax" not in record.pathname)
