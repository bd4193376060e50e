"""The public API keeps its conventions: documented, options keyword-only, every name exported."""

import inspect

import stn_jax

# Array arguments that may be passed positionally; everything else must be keyword-only.
_POSITIONAL = {
  "affine_grid": ("theta", "size"),
  "projective_grid": ("matrix", "size"),
  "tps_grid": ("source_points", "size"),
  "identity_grid": ("size",),
  "pixel_centers": ("n",),
  "tps_control_points": ("num_points",),
  "grid_sample": ("image", "grid"),
  "warp": ("image", "params"),
  "params_to_grid": ("params", "size"),
  "param_shape": ("kind",),
  "identity_params": ("kind",),
  "affine_theta": (),
  "attention_theta": ("params",),
  "compose_affine": ("a", "b"),
  "invert_affine": ("theta",),
  "theta_to_pixel_matrix": ("theta",),
  "pixel_matrix_to_theta": ("matrix",),
}


def test_every_public_function_is_exported_documented_and_keyword_only():
  functions = {name: getattr(stn_jax, name) for name in stn_jax.__all__ if callable(getattr(stn_jax, name))}
  assert set(functions) == set(_POSITIONAL), set(functions) ^ set(_POSITIONAL)
  for name, fn in functions.items():
    doc = inspect.getdoc(fn) or ""
    assert len(doc) > 40, f"{name} has no real docstring"
    parameters = inspect.signature(fn).parameters.values()
    positional = tuple(p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY)
    assert positional == _POSITIONAL[name], (name, positional)


def test_image_functions_document_shapes():
  for name in ("affine_grid", "projective_grid", "tps_grid", "grid_sample", "warp"):
    doc = inspect.getdoc(getattr(stn_jax, name))
    assert "Args:" in doc and "Returns:" in doc and "H_out" in doc, name
