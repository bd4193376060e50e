"""Co-localisation: the triplet loss, boxes and IoU against references, the encoder's checks, and a whole run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax
from stn_jax import models
from stn_jax.data import distortions
from stn_jax.training import coloc, config_lib, train
from tests.helpers import experiment, set_fields, synthetic_datasets, synthetic_digits, tiny_config


def test_the_triplet_loss_is_the_papers_hinge_over_the_pairs_n_m():
  rng = np.random.default_rng(0)
  e, r = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  margin = 0.7
  terms = [
    max(0.0, np.sum((e[n] - e[m]) ** 2) - np.sum((e[n] - r[n]) ** 2) + margin)
    for n in range(6)
    for m in range(6)
    if n != m
  ]
  got = coloc.triplet_loss(jnp.asarray(e, jnp.float32), jnp.asarray(r, jnp.float32), margin)
  assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)


def test_attention_boxes_and_iou():
  boxes = coloc.attention_boxes(np.array([[1 / 3, 0.0, 0.0], [0.5, -0.5, 0.5], [-1 / 3, 0.0, 0.0]]), 84)
  np.testing.assert_allclose(boxes, [[28, 28, 56, 56], [0, 42, 42, 84], [28, 28, 56, 56]], atol=1e-9)
  # The box is where the crop reads: a crop of an image that is 1 inside the box and 0 outside is all ones.
  image = np.zeros((1, 84, 84, 1), np.float32)
  image[0, 42:84, 0:42] = 1.0
  import stn_jax

  crop = stn_jax.warp(jnp.asarray(image), jnp.asarray([[0.5, -0.5, 0.5]]), kind="attention", size=(21, 21))
  np.testing.assert_allclose(np.asarray(crop), 1.0, atol=1e-6)
  a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
  b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
  np.testing.assert_allclose(coloc.iou(a, b), [1.0, 50 / 150, 0.0])


def test_random_crops_lie_inside_the_image():
  crops = np.asarray(coloc.random_crops(jax.random.key(0), 500, 0.25))
  boxes = coloc.attention_boxes(crops, 84)
  assert (crops[:, 0] == 0.25).all() and boxes.min() >= 0 and boxes.max() <= 84
  assert np.ptp(boxes[:, 0]) > 50  # spread over where they fit


def test_the_embedding_is_every_hidden_layer_and_the_logits():
  config = tiny_config()
  model = models.create_model(config.model, (32, 32, 1), seed=0)
  x = jnp.asarray(np.random.default_rng(1).random((3, 32, 32, 1)), jnp.float32)
  e = model.classifier.embed(x)
  # the seed's CNN: conv 16 3x3/2 (16x16x16), conv 16 3x3/2 (8x8x16), dense 32 (tiny_config), logits 10
  assert e.shape == (3, 16 * 16 * 16 + 8 * 8 * 16 + 32 + 10)
  np.testing.assert_allclose(np.asarray(e[:, -10:]), np.asarray(model.classifier(x)), rtol=1e-6)
  parts = model.classifier.embed_parts(x)
  assert [p.shape[1] for p in parts] == [16 * 16 * 16, 8 * 8 * 16, 32, 10]
  np.testing.assert_array_equal(np.concatenate([np.asarray(p) for p in parts], 1), np.asarray(e))


def test_per_layer_embeddings_are_unit_norm_and_weighted():
  rng = np.random.default_rng(3)
  parts = [rng.normal(size=(4, d)) * rng.uniform(0.1, 50) for d in (7, 3, 5)]
  weights = (1.0, 2.0, 5.0)
  got = np.asarray(coloc.combine([jnp.asarray(p, jnp.float32) for p in parts], "per_layer", weights))
  want = np.concatenate(
    [
      p / np.linalg.norm(p, axis=1, keepdims=True) * np.sqrt(w / sum(weights))
      for p, w in zip(parts, weights, strict=True)
    ],
    1,
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
  equal = np.asarray(coloc.combine([jnp.asarray(p, jnp.float32) for p in parts], "per_layer"))
  np.testing.assert_allclose(np.linalg.norm(equal[:, 7:10], axis=1), np.sqrt(1 / 3), rtol=1e-5)
  np.testing.assert_array_equal(
    np.asarray(coloc.combine([jnp.asarray(p, jnp.float32) for p in parts], "none")),
    np.concatenate(parts, 1).astype(np.float32),
  )


def test_a_fixed_scale_and_a_crop_kept_inside_the_image():
  config = coloc.default_config()
  raw = jnp.asarray(np.random.default_rng(4).normal(scale=5.0, size=(50, 3)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(coloc.attention_params(config, raw)), np.asarray(raw))  # the paper's
  config.model.learn_scale, config.model.keep_inside = False, True
  theta = np.asarray(coloc.attention_params(config, raw))
  np.testing.assert_allclose(theta[:, 0], config.initial_scale, rtol=1e-6)
  boxes = coloc.attention_boxes(theta, 84)
  assert boxes.min() >= 0 and boxes.max() <= 84 and np.ptp(boxes[:, 0]) > 40
  np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 28, rtol=1e-5)
  # Near the centre the bounded translation is the raw one, to first order.
  small = jnp.asarray([[0.0, 1e-3, -2e-3]])
  np.testing.assert_allclose(np.asarray(coloc.attention_params(config, small))[0, 1:], [2e-3 / 3, -4e-3 / 3], rtol=1e-3)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  """A classification workdir (the seed's CNN on synthetic R digits, 4 steps) to encode with."""
  workdir = tmp_path_factory.mktemp("encoder")
  train.train_and_evaluate(tiny_config(num_train_steps=4, num_epochs=0), workdir, datasets=synthetic_datasets())
  return workdir


def _config(encoder, **overrides):
  config = coloc.default_config()
  config.encoder_workdir = str(encoder)
  config.num_seeds, config.num_train_steps, config.eval_every_steps = 2, 3, 2
  return set_fields(config, overrides)


def _sets(name="coloc-clutter"):
  digits, _ = synthetic_digits(np.random.default_rng(2), 12)
  where = dict(seed=0, split="train", indices=np.arange(12))
  images = distortions.distort(name, digits, **where).astype(np.float32)[..., None] / 255
  return {
    "train": (images[:8], distortions.distort_boxes(name, **where)[:8]),
    "test": (images[8:], distortions.distort_boxes(name, **where)[8:]),
  }


def test_a_run_trains_reports_per_seed_and_keeps_its_workdir(encoder, tmp_path):
  config = _config(encoder, **{"dataset.name": "coloc-clutter"})
  results = coloc.train_and_evaluate(config, tmp_path, sets=_sets())
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["seed"], r["step"]) for r in rows] == [(0, 0), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
  assert all(np.isfinite(r["loss"]) for r in rows if r["step"]) and all(0 <= r["iou_rate"] <= 1 for r in rows)
  assert results["iou_rate_per_seed"] == [rows[2]["iou_rate"], rows[5]["iou_rate"]]
  assert len(results["test_iou_rate_per_seed"]) == 2 and results["num_params"] > 0
  # The losses move: the transformer is trained through the frozen encoder.
  assert rows[1]["loss"] != rows[2]["loss"]
  assert (tmp_path / "figures" / "boxes.png").is_file()
  # A finished run is reported as it is; another config there is refused, in one line.
  again = coloc.train_and_evaluate(config, tmp_path, sets=_sets())
  assert again == results
  with pytest.raises(config_lib.ConfigError, match="holds a run of another config"):
    coloc.train_and_evaluate(_config(encoder, margin=2.0), tmp_path, sets=_sets())
  # A workdir written before the fields of coloc.ADDED existed is the same run (their values then were the defaults).
  stored = json.loads((tmp_path / "config.json").read_text())
  for field in ("blur_sigma", "blur_start", "blur_steps", "schedule", "embedding"):
    del stored[field]
  del stored["model"]["learn_scale"], stored["model"]["keep_inside"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  assert coloc.train_and_evaluate(config, tmp_path, sets=_sets()) == results


def test_the_tuned_options_train_a_translation_only_crop_inside_the_image(encoder, tmp_path):
  overrides = {
    "blur_sigma": 2.0,
    "model.learn_scale": False,
    "model.keep_inside": True,
    "embedding.normalise": "per_layer",
    "embedding.weights": (1.0, 1.0, 2.0, 4.0),  # the seed's CNN: two convolution blocks, a dense layer, the logits
    "schedule": "cosine",
    "learning_rate": 0.05,
    "num_seeds": 1,
    "num_train_steps": 4,
  }
  coloc.train_and_evaluate(_config(encoder, **overrides), tmp_path, sets=_sets("coloc"))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [0, 2, 4] and all(np.isfinite(r["loss"]) for r in rows[1:])
  assert rows[1]["loss"] != rows[2]["loss"]


def test_a_blur_schedule_narrows_linearly_and_its_first_step_is_the_constant_blurs(encoder, tmp_path):
  config = _config(encoder, blur_start=3.0, blur_sigma=0.5, blur_steps=4)
  # Linear from 3 to 0.5 over 4 steps, rounded to BLUR_QUANTUM, then 0.5.
  expected = [3.0, 2.5, 1.75, 1.0, 0.5, 0.5]
  assert [coloc.blur_at(config, i) for i in range(6)] == pytest.approx(expected, abs=coloc.BLUR_QUANTUM / 2)
  quanta = [coloc.blur_at(config, i) / coloc.BLUR_QUANTUM for i in range(6)]
  assert all(q == round(q) for q in quanta)
  assert coloc.blur_at(_config(encoder, blur_sigma=2.0), 0) == 2.0  # no schedule: blur_sigma throughout
  run = lambda name, **o: coloc.train_and_evaluate(
    _config(encoder, num_seeds=1, num_train_steps=4, eval_every_steps=1, learning_rate=0.05, **o),
    tmp_path / name,
    sets=_sets("coloc"),
  )
  rows = lambda name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
  run("schedule", blur_start=3.0, blur_sigma=0.5, blur_steps=4)
  run("constant", blur_sigma=3.0)
  scheduled, constant = rows("schedule"), rows("constant")
  assert [r["blur_sigma"] for r in scheduled] == [coloc.blur_at(config, i) for i in range(5)]
  # Step 0 sees the images at blur_start in both runs: the same boxes, the same first loss; then the schedule narrows.
  for name in ("iou_rate", "mean_iou"):
    assert scheduled[0][name] == constant[0][name]
  np.testing.assert_allclose(scheduled[1]["loss"], constant[1]["loss"], rtol=1e-6)
  assert abs(scheduled[2]["loss"] - constant[2]["loss"]) > 1e-6


def test_a_bad_config_or_encoder_is_refused_before_any_work(encoder, tmp_path):
  cases = [
    ({"encoder_workdir": ""}, "config.encoder_workdir is empty"),
    ({"encoder_workdir": str(tmp_path / "none")}, "no config.json there; train the encoder first"),
    ({"dataset.digit": 10}, r"config.dataset.digit must be a digit 0-9; got 10"),
    ({"dataset.name": "R"}, r"config.dataset.name must be one of 'coloc', 'coloc-clutter'; got 'R'"),
    ({"initial_scale": 1.5}, r"config.initial_scale must be in \(0, 1\]; got 1.5"),
    ({"model.localization.features": (0,)}, r"config.model.localization: CNNLocalization: features"),
    ({"blur_sigma": -1.0}, r"config.blur_sigma must be a number >= 0; got -1.0"),
    ({"blur_start": -2.0}, r"config.blur_start must be a number >= 0; got -2.0"),
    ({"blur_steps": -1}, r"config.blur_steps must be an int >= 0; got -1"),
    ({"blur_steps": 5}, r"config.blur_steps must be at most num_train_steps \(3\); got 5"),
    ({"schedule": "linear"}, r"config.schedule must be one of 'constant', 'cosine'; got 'linear'"),
    ({"embedding.normalise": "l2"}, r"config.embedding.normalise must be one of 'none', 'per_layer'; got 'l2'"),
    ({"embedding.weights": (1.0, 2.0, 3.0, 4.0)}, r"must be \(\) or positive numbers with normalise='per_layer'"),
    (
      {"embedding.normalise": "per_layer", "embedding.weights": (1.0, 2.0)},
      r"config.embedding.weights has 2 weights; the encoder in .* has 4 layers",
    ),
  ]
  for overrides, message in cases:
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(_config(encoder, **overrides))  # the entry point's check
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text((encoder / "config.json").read_text())
  with pytest.raises(config_lib.ConfigError, match="no checkpoint there yet"):
    coloc.validate(_config(encoder, encoder_workdir=str(tmp_path / "empty")))
  assert not (tmp_path / "run").exists()


def test_the_table_reports_the_seed_of_the_lowest_final_loss(tmp_path):
  paper_table = experiment("paper_table")
  rng = np.random.default_rng(5)
  losses, rates, tests = rng.uniform(0.05, 0.6, 3), rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
  run = tmp_path / "name=coloc,digit=4"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"task": "coloc"}))
  rows = [{"seed": s, "step": t, "loss": None if t == 0 else float(losses[s] + (1.0 if t == 5 else 0.0)),
           "iou_rate": float(rates[s]) if t == 10 else 0.0} for s in range(3) for t in (0, 5, 10)]  # fmt: skip
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  results = {"dataset": "coloc", "digit": 4, "num_seeds": 3, "num_train_steps": 10, "iou_rate": float(rates.mean()),
             "iou_rate_std": float(rates.std()), "test_iou_rate_per_seed": tests.tolist()}  # fmt: skip
  (run / "results.json").write_text(json.dumps(results))
  found = paper_table.collect_coloc(tmp_path)
  best = int(np.argmin(losses))
  assert found[("coloc", 4)]["selected"] == {
    "seed": best,
    "loss": pytest.approx(losses[best]),
    "iou_rate": pytest.approx(rates[best]),
    "test_iou_rate": pytest.approx(tests[best]),
  }
  line = next(x for x in paper_table.coloc_table(found).splitlines() if x.startswith("| 4 |"))
  assert line.split("|")[3].strip() == f"{100 * rates[best]:.0f} ({100 * tests[best]:.0f})"


def test_encoder_layers_counts_what_the_restored_encoder_returns(encoder):
  embed, shape, _ = coloc.load_encoder(encoder)
  x = jnp.asarray(np.random.default_rng().random((2, *shape)), jnp.float32)
  assert coloc.encoder_layers(encoder) == len(embed(x)) == 4  # the seed's CNN: 2 convolution blocks, dense, logits


def test_diagnostics_crops_invert_the_boxes_and_the_empty_corner_misses_the_digit():
  diagnostics = experiment("coloc_diagnostics")
  rng = np.random.default_rng()
  size, side = 84, rng.uniform(10, 40, 20)
  x0, y0 = rng.uniform(0, size - side), rng.uniform(0, size - side)
  boxes = np.stack([x0, y0, x0 + side, y0 + side], 1)
  np.testing.assert_allclose(coloc.attention_boxes(diagnostics.box_params(boxes, size), size), boxes, atol=1e-4)
  dx, dy = rng.uniform(0, size - 28, (2, 20))  # 28 px digits anywhere, as coloc places them
  digits = np.stack([dx, dy, dx + 28, dy + 28], 1)
  assert np.all(coloc.iou(coloc.attention_boxes(diagnostics.empty_corner(digits, size), size), digits) == 0)


def test_diagnostics_free_crops_start_where_asked_and_the_losses_are_the_runs(encoder):
  diagnostics = experiment("coloc_diagnostics")
  config = _config(encoder)
  images, boxes = _sets("coloc")["train"]
  embed, shape, _ = coloc.load_encoder(encoder)
  key = jax.random.key(int(np.random.default_rng().integers(1 << 30)))
  row = diagnostics.diagnose(config, jnp.asarray(images), boxes, embed, shape[:2], key, draws=2,
                             offsets=["0", "30", "init"], free_steps=0, free_lr=0.01)  # fmt: skip
  assert row["free 0"] == (1.0, 1.0) and row["free 30"] == (0.0, 0.0)  # no steps: as started; 30 px: IoU < 0.5
  assert row["free init"][0] == row["free init"][1] and 0 <= row["away"] <= 1
  draws = jax.random.split(key, 3)[:2]
  n = len(images)
  true = jnp.asarray(diagnostics.box_params(boxes, images.shape[1]))
  warp = lambda p: stn_jax.warp(jnp.asarray(images), p, kind="attention", size=shape[:2])
  encode = lambda crops: coloc.combine(embed(crops), "none")
  expected = np.mean([
    coloc.triplet_loss(encode(warp(true)), encode(warp(coloc.random_crops(k, n, config.random_crop_scale))), 1.0)
    for k in draws
  ])  # fmt: skip
  np.testing.assert_allclose(row["true"], expected, rtol=1e-5)
