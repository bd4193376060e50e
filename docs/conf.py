"""Sphinx configuration of the stn_jax documentation (`make docs`: HTML into docs/_build/html, warnings are errors).

Pages are MyST Markdown and notebooks stored as MyST Markdown text (myst-nb), executed on CPU at every build, so
their code cannot go stale. Nothing is downloaded at build time (no intersphinx).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "stn_jax"
author = "the stn_jax developers"
copyright = "2026, the stn_jax developers"

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
]
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# Notebooks: executed at every build, an error in a cell fails it.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures show them; the docstrings say what the shapes are
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a dataclass's Attributes section as fields, not a second description of each

html_theme = "alabaster"
html_title = "stn_jax"
html_static_path: list[str] = []

_SECTIONS = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Attributes|Example|Examples):\s*$", re.M)


def _docstring(app, what, name, obj, options, lines):
  """Google-style docstrings (Args / Returns sections) go to napoleon; the others are shown as written, preformatted,
  as help() shows them (their tables and aligned lists are meant to be read that way)."""
  del app, what, name, obj, options
  text = "\n".join(lines)
  if not text.strip() or _SECTIONS.search(text):
    return
  lines[:] = ["::", ""] + ["   " + line if line.strip() else "" for line in lines] + [""]


def setup(app):
  app.connect("autodoc-process-docstring", _docstring, priority=400)
