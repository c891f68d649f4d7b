"""The estimator and model protocols: names live only in the registry."""
import ast
import inspect
import pathlib

from absl.testing import absltest
import jax
import numpy as np

from rebar_jax import estimators
from rebar_jax import gradients
from rebar_jax import models
from rebar_jax.estimators import protocol
from rebar_jax.estimators import registry


def _code_strings_and_names(module):
  """String constants (docstrings excluded) and identifiers in a module."""
  tree = ast.parse(inspect.getsource(module))
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                and node.body and isinstance(node.body[0], ast.Expr)}
  strings = {node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and id(node) not in docstrings}
  names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
  names |= {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)}
  return strings, names


def _imports(path):
  """The rebar_jax modules a file imports (dotted names)."""
  tree = ast.parse(path.read_text())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      out |= {f"{node.module}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
  return {m for m in out if m.startswith("rebar_jax")}


class ProtocolTest(absltest.TestCase):

  def test_imports_run_down_only(self):
    # estimators < models < gradients < diagnostics, train: nothing imports
    # a layer above its own.
    root = pathlib.Path(gradients.__file__).parent
    above = {"estimators": ("rebar_jax.models", "rebar_jax.gradients",
                            "rebar_jax.diagnostics", "rebar_jax.train"),
             "models": ("rebar_jax.gradients", "rebar_jax.diagnostics",
                        "rebar_jax.train")}
    for package, banned in above.items():
      for path in (root / package).glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(banned)}
        self.assertEmpty(bad, f"{path.name} imports {bad}")
    self.assertEmpty({m for m in _imports(root / "gradients.py")
                      if m.startswith(("rebar_jax.train",
                                       "rebar_jax.diagnostics"))})

  def test_composition_knows_no_estimator_and_no_model(self):
    strings, names = _code_strings_and_names(gradients)
    estimator_names = set(registry.ENTRIES)
    self.assertEmpty(
        {s for s in strings for n in estimator_names if n in s.split()})
    self.assertEmpty(names & {"SBN", "CategoricalVAE", "sbn_lib", "cat_lib"})

  def test_every_one_layer_estimator_trains(self):
    for family, fns in (("bernoulli", estimators.BERNOULLI),
                        ("categorical", estimators.CATEGORICAL)):
      layers = registry.names(family=family, kind=registry.LAYER)
      self.assertContainsSubset(set(fns), set(layers))
      for name in layers:
        self.assertIsInstance(registry.build(name, family), protocol.Estimator)

  def test_summary_reports_the_tuned_scalars(self):
    model = models.SBN(num_layers=2, num_latents=3, data_dim=4)
    rebar = gradients.EstimatorSpec("rebar", eta=0.5, temperature=0.25)
    state = rebar.init(jax.random.key(0), model)
    out = rebar.summary(jax.device_get(state.params))
    np.testing.assert_allclose([out["eta"], out["temperature"]], [0.5, 0.25],
                               rtol=1e-6)
    relax = gradients.EstimatorSpec("relax", temperature=0.25)
    state = relax.init(jax.random.key(0), model)
    self.assertLen(state.params, 2)  # one control variate per layer
    np.testing.assert_allclose(
        relax.summary(jax.device_get(state.params))["temperature"], 0.25,
        rtol=1e-6)
    self.assertEqual(gradients.EstimatorSpec("disarm").summary(()), {})

  def test_reinforce_loo_needs_two_samples(self):
    with self.assertRaisesRegex(ValueError,
                                "loo_samples must be an integer >= 2"):
      gradients.EstimatorSpec("reinforce_loo", loo_samples=1)


if __name__ == "__main__":
  absltest.main()
