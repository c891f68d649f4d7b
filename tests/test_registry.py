"""The estimator registry: one entry per estimator, open to a user's own.

* A user's Bernoulli estimator with one option of its own is one function and
  one `registry.register` call in the user's file (examples/scaled_disarm.py,
  copied outside the package); the user's config file imports it, and
  `python -m rebar_jax.train` trains with it, the option set and checked
  from the command line, as typed from the user's directory.
* `register` refuses what would break the registry (a name taken, an option
  that is neither in the schema nor new, a kind or family it does not know).
* Every entry is whole: a LAYER entry builds for each of its families, each
  option it reads is in the schema, its cost names each family, and what the
  registry derives (the one-layer maps and unbiased sets) agrees with it.
"""
import json
import textwrap

import pytest

from rebar_jax import estimators
from rebar_jax.estimators import options as options_lib
from rebar_jax.estimators import protocol
from rebar_jax.estimators import registry
import user_shell

# The command of examples/scaled_disarm.py and docs/guides/estimators.md,
# shortened (a smaller model, 100 steps, a workdir).
COMMAND = ("python -m rebar_jax.train --config=examples/scaled_disarm_config.py "
           "--config.scale=0.5")
SHORT = (
    " --workdir=run "
    "--config.num_latents=10 --config.num_steps=100 "
    "--config.steps_per_call=50 --config.checkpoint_every=50 "
    "--config.eval_every=100 --config.eval_num_samples=2 "
    "--config.eval_max_examples=50 --config.diagnostic_draws=0 "
    "--config.progress_bar=False")


def test_a_users_estimator_trains_from_the_command_line(tmp_path):
  """examples/scaled_disarm.py, copied to a user's directory (outside the
  package), registers the estimator its config trains with."""
  clone = user_shell.user_dir(tmp_path)
  done = user_shell.run(COMMAND + SHORT, clone)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((clone / "run" / "run.json").read_text())
  assert record["config"]["estimator"] == "scaled_disarm"
  assert record["config"]["scale"] == 0.5
  final = json.loads((clone / "run" / "final_metrics.json").read_text())
  assert final["step"] == 100 and final["train_elbo_last_1000_steps"] < 0

  refused = user_shell.run(
      COMMAND.replace("0.5", "-1.0") + SHORT.replace("=run ", "=run2 "),
      clone)
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines() == [
      "error: config.scale must be a float > 0, got -1.0."], refused.stderr


def _entry(name="x", **changes):
  fields = dict(name=name, kind=registry.LAYER,
                families={"bernoulli": protocol.one_layer(
                    estimators.disarm)},
                unbiased_for=registry.GRAD_F,
                cost={"bernoulli": "2 evaluations of f"}, reference="r")
  fields.update(changes)
  return registry.Entry(**fields)


@pytest.mark.parametrize("entry, message", [
    (_entry("disarm"), "the name 'disarm' is registered already"),
    (_entry(options=("nope",)), r"options \['nope'\] are neither"),
    (_entry(kind="fancy"), "kind 'fancy' is not one of"),
    (_entry(families={"poisson": protocol.reinforce}),
     r"families \['poisson'\] must be among"),
    (_entry(families={"bernoulli": None}),
     "a layer estimator needs a builder per family"),
    (_entry(capabilities=frozenset({"fast"})), "capabilities"),
    (_entry(new_options=(options_lib.Option(
        "temperature", 1.0, "m", lambda v: None),)),
     "the option 'temperature' exists already"),
])
def test_register_refuses_what_would_break_the_registry(entry, message):
  with pytest.raises(ValueError, match=message):
    registry.register(entry)
  assert entry.name == "disarm" or entry.name not in registry.ENTRIES


@pytest.mark.parametrize("name", list(registry.ENTRIES))
def test_every_entry_is_whole(name):
  entry = registry.get(name)
  assert set(entry.options) <= set(options_lib.OPTIONS), entry.options
  assert set(entry.cost) == set(entry.families)
  assert entry.reference
  if entry.kind == registry.LAYER:
    for family in entry.families:
      built = registry.build(name, family)
      assert isinstance(built, protocol.Estimator)
  for family, fn in entry.one_layer.items():
    assert estimators.get(name, family) is fn
    unbiased = {"bernoulli": estimators.UNBIASED,
                "categorical": estimators.UNBIASED_CATEGORICAL,
                "gaussian": estimators.UNBIASED_GAUSSIAN}[family]
    assert (name in unbiased) == (entry.unbiased_for is not None)


def test_unknown_names_list_the_choices():
  with pytest.raises(ValueError, match="Unknown estimator 'rebbar'; choose"):
    registry.get("rebbar")
  with pytest.raises(ValueError, match="for categorical layers; choose one"):
    registry.build("disarm", "categorical")
  with pytest.raises(ValueError, match=textwrap.dedent(
      "Unknown bernoulli estimator 'arsm'")):
    estimators.get("arsm", "bernoulli")
