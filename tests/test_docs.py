"""The documentation site (docs/, built by `make docs`) and the package layout it describes."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import stn_jax

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()


def _modules(package: str) -> list[str]:
  folder = ROOT / Path(*package.split("."))
  return [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")]


def test_the_api_reference_lists_every_exported_name_and_every_module_of_the_trainer_models_and_data():
  listed = re.search(r"\.\. autosummary::\n(?:   :.*\n)*\n((?:   \S+\n)+)", API)
  assert listed, "docs/api.md has no autosummary of stn_jax's names"
  names = listed.group(1).split()
  assert sorted(names) == sorted(stn_jax.__all__), set(names) ^ set(stn_jax.__all__)
  documented = set(re.findall(r"^\.\. automodule:: (\S+)$", API, re.M))
  wanted = {"stn_jax.main", "stn_jax.predict"}
  for package in ("stn_jax.training", "stn_jax.models", "stn_jax.data"):
    wanted.update(_modules(package))
  assert wanted <= documented, f"missing from docs/api.md: {sorted(wanted - documented)}"


def test_notebooks_are_stored_as_text_and_every_page_is_in_a_toctree():
  docs = ROOT / "docs"
  notebooks = sorted((docs / "notebooks").glob("*"))
  assert notebooks and all(p.suffix == ".md" and "file_format: mystnb" in p.read_text() for p in notebooks)
  index = (docs / "index.md").read_text()
  for page in [*notebooks, *docs.glob("*.md")]:
    name = page.relative_to(docs).with_suffix("").as_posix()
    assert name == "index" or f"\n{name}\n" in index, f"{name} is in no toctree of docs/index.md"


def test_import_stn_jax_loads_jax_and_numpy_only_not_the_trainers_libraries():
  code = "import json, sys, stn_jax; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
  loaded = set(json.loads(out))
  assert "jax" in loaded and "numpy" in loaded
  assert not loaded & {"flax", "optax", "orbax", "tensorflow_datasets", "tensorflow", "ml_collections", "torch"}


def test_the_tree_shows_the_library_the_trainer_and_the_entry_points():
  package = ROOT / "stn_jax"
  assert {p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")} == {
    "spatial",
    "training",
    "models",
    "data",
  }
  assert {p.name for p in package.glob("*.py")} == {"__init__.py", "main.py", "predict.py"}
  tests = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith("__")}
  assert {"spatial", "training", "models", "data"} <= tests


# ---------------------------------------------------------------------------------------------------------------------
# Every code block of the README and the pages runs as written: Python blocks are executed (the notebooks' and the
# pages' {code-cell} blocks by the docs build), and every shell command is checked against what it names: the make
# target, the script, its flags, the config file and each config field it sets.

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "notebooks").glob("*.md"))]
SCRIPTS = {
  "stn_jax.main": "stn_jax/main.py",
  "stn_jax.predict": "stn_jax/predict.py",
  "stn_jax.data": "stn_jax/data/__main__.py",
}
ABSL_FLAGS = {"help", "helpfull", "helpshort", "flagfile"}
COMMAND = re.compile(r"(?:\S*/)?python3? (-m \S+|experiments/\S+\.py)([^\n\"&|;#]*)")


def _blocks(language: str) -> list[tuple[str, str]]:
  found = []
  for page in PAGES:
    for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), re.M | re.S):
      found.append((page.relative_to(ROOT).as_posix(), block))
  return found


def _commands():
  for page, block in _blocks("sh"):
    text = re.sub(r"\\\n\s*", " ", block)  # continuation lines
    for line in text.splitlines():
      for target in re.findall(r"^make (\w+)", line.strip()):
        yield page, "make", target, []
      for program, args in COMMAND.findall(line):
        yield page, program, program, shlex.split(args)


def _defined_flags(script: Path) -> set[str]:
  """The absl flags a script defines, and those of the experiments/ modules it imports (sweep.py's --dry_run)."""
  source = script.read_text()
  names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
  for module in re.findall(r"^(?:import|from) (\w+)", source, re.M):
    if (ROOT / "experiments" / f"{module}.py").is_file() and ROOT / "experiments" / f"{module}.py" != script:
      names |= _defined_flags(ROOT / "experiments" / f"{module}.py")
  return names


def test_the_python_blocks_of_the_readme_and_the_pages_run():
  blocks = _blocks("python")
  assert any(page == "README.md" for page, _ in blocks)
  for page, code in blocks:
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"a python block of {page} fails:\n{code}\n{run.stderr[-2000:]}"


def test_every_shell_command_in_the_readme_and_the_pages_names_real_targets_scripts_flags_and_config_fields():
  from stn_jax.training import config_lib

  targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
  configs = {}
  checked = 0
  for page, kind, program, args in _commands():
    checked += 1
    if kind == "make":
      assert program in targets, f"{page}: make {program}: no such target in the Makefile"
      continue
    script = SCRIPTS.get(program[3:]) if program.startswith("-m ") else program
    assert script is not None and (ROOT / script).is_file(), f"{page}: python {program}: no such script"
    defined = _defined_flags(ROOT / script) | ABSL_FLAGS
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    fields = None
    if spec is not None and "config" in defined:
      if spec not in configs:
        assert (ROOT / spec.split(":")[0]).is_file(), f"{page}: --config={spec}: no such file"
        config = config_lib.load(f"{ROOT / spec}")  # "path.py[:arg]"
        configs[spec] = {"config." + k for k in config_lib.flatten(config_lib.to_dict(config))}
      fields = configs[spec]
    for i, arg in enumerate(args):
      if arg.startswith("[") or (not arg.startswith(("--", "config.")) and args[i - 1] != "--grid"):
        continue
      name = arg.strip("[]").lstrip("-").split("=", 1)[0]
      if name.startswith("config."):
        if fields is not None:
          assert any(f == name or f.startswith(name + ".") for f in fields), f"{page}: {program}: no field {name}"
        continue
      assert name in defined or (name.startswith("no") and name[2:] in defined), f"{page}: {program}: no flag --{name}"
  assert checked > 20


_DOCSTRING_CHECK = """
import importlib, inspect, json, sys
import stn_jax
modules = [stn_jax] + [importlib.import_module(name) for name in sys.argv[1:]]
missing = []
for module in modules:
  names = stn_jax.__all__ if module is stn_jax else [n for n in vars(module) if not n.startswith("_")]
  for name in names:
    obj = getattr(module, name)
    if not inspect.isfunction(obj) or (module is not stn_jax and obj.__module__ != module.__name__):
      continue
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
      missing.append(f"{obj.__module__}.{name}: no docstring")
    elif inspect.signature(obj).parameters and "Args:" not in doc:
      missing.append(f"{obj.__module__}.{name}: no Args section")
print(json.dumps(missing))
"""


def test_docstrings_follow_google_style_with_args_for_every_public_function():
  # In a subprocess: stn_jax.main defines absl flags, which other test modules' entry points define too.
  modules = ["stn_jax.main", "stn_jax.predict"]
  for package in ("stn_jax.training", "stn_jax.models", "stn_jax.data"):
    modules += _modules(package)
  run = subprocess.run(
    [sys.executable, "-c", _DOCSTRING_CHECK, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert run.returncode == 0, run.stderr[-2000:]
  missing = json.loads(run.stdout.splitlines()[-1])
  assert not missing, missing
