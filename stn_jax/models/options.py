"""A module's configurable options, read from its constructor: defaults from the signature, docs from the docstring.

A model sub-config (`config.model.classifier.cnn`, ...) is `default_options(CNNClassifier)` and is passed straight
back to the constructor as keyword arguments, so a new option of a model is one keyword argument with a default and
one line in its docstring's Args section: no config file or trainer changes.
"""

from __future__ import annotations

import inspect
import re

import ml_collections

# Constructor arguments that the model builder fills in itself (the input shape, the transform's identity, the
# compute dtype, which is config.compute_dtype for the whole model, ...).
_NOT_OPTIONS = frozenset({"rngs", "num_classes", "dtype"})


def option_names(cls) -> tuple[str, ...]:
  """A model class's configurable options: the keyword-only arguments of its `__init__` that carry a default.

  Args:
    cls: the class.

  Returns:
    Their names.
  """
  parameters = inspect.signature(cls.__init__).parameters.values()
  return tuple(
    p.name
    for p in parameters
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and p.default is not inspect.Parameter.empty
    and p.name not in _NOT_OPTIONS
  )


def default_options(cls) -> ml_collections.ConfigDict:
  """The defaults of a model class's options, as a config section.

  Args:
    cls: the class.

  Returns:
    {option: default} as a ConfigDict (sequences as tuples: overridable from the command line).
  """
  parameters = inspect.signature(cls.__init__).parameters
  out = ml_collections.ConfigDict()
  for name in option_names(cls):
    default = parameters[name].default
    out[name] = tuple(default) if isinstance(default, list) else default
  return out


def option_docs(cls) -> dict[str, str]:
  """{option: its one-paragraph description} from the 'Args:' section of the class docstring.

  The section is what follows the docstring's first 'Args:'. After `inspect.getdoc`, an entry is a line
  `  name: text` (two spaces in) and the lines four spaces in under it; the first line that is not indented (the
  next section, e.g. 'Raises:') ends the section.

  Args:
    cls: the class.

  Returns:
    {option: its description}, the entry's lines joined by spaces, without trailing full stops; {} without an 'Args:'
    section.
  """
  doc = inspect.getdoc(cls) or ""
  section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
  docs: dict[str, str] = {}
  current = None
  for line in section.splitlines():
    match = re.match(r"^  (\w+): (.*)$", line)
    if match:
      current = match.group(1)
      docs[current] = match.group(2).strip()
    elif current and line.startswith("    "):
      docs[current] += " " + line.strip()
    elif line.strip() and not line.startswith(" "):
      break
  return {name: text.rstrip(".") for name, text in docs.items()}


def check_positive_ints(owner: str, **values) -> None:
  """Checks that each value is a positive int (or a sequence of them, possibly empty).

  Args:
    owner: what the error names.
    **values: {option: value}.

  Raises:
    ValueError: naming the option, its value and what is allowed.
  """
  for name, value in values.items():
    many = isinstance(value, (tuple, list))
    items = value if many else (value,)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
      what = "a sequence of positive ints" if many else "a positive int"
      raise ValueError(f"{owner}: {name} must be {what}; got {value!r}.")


def check_rate(owner: str, name: str, value) -> None:
  """Checks that a value is a rate in [0, 1).

  Args:
    owner: what the error names.
    name: the option.
    value: its value.

  Raises:
    ValueError: naming the option, its value and what is allowed.
  """
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
    raise ValueError(f"{owner}: {name} must be a rate in [0, 1); got {value!r}.")
