"""The estimator advisor (rebar_jax.advise): ranking, bias check, command.

* The ranking is a pure function: synthetic measurements with a known
  answer, a clear winner, a tie (the cheaper step preferred) and a biased
  estimator with the least work that is never recommended.
* The bias check on the user's model: an estimator registered for the test,
  biased (2 x DisARM) but claimed unbiased, fails the comparison with the
  exact gradient of a 3-unit SBN; DisARM and REINFORCE pass it.
* Advice on every config and on examples/custom_model.py (a model mixing
  categorical and Bernoulli layers), with tiny budgets: the command as typed
  on configs/sbn_linear.py and on the custom model, the function in this
  process on the other configs; a checkpoint's parameters are the ones
  advised on.
"""
import importlib
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sbn_linear
from configs import sbn_mnist
from rebar_jax import advise
from rebar_jax import errors
from rebar_jax import train
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import protocol
from rebar_jax.estimators import registry
from rebar_jax.utils import checkpoints
import paper_data
import user_shell

# The tiny budget of the tests that run the advisor: as the command's flags
# (TINY_FLAGS, below) and as a Budget without the bias check (TINY).
TINY_BUDGET = dict(num_draws=4, num_batches=1, tune_steps=2, timing_repeats=1,
                   timing_seconds=0.01, bootstrap=20)
TINY = advise.Budget(**TINY_BUDGET, bias_check=False)


def row(name, work, lo, hi, seconds, unbiased=True, **extra):
  return dict(name=name, work=work, work_lo=lo, work_hi=hi, seconds=seconds,
              unbiased=unbiased, **extra)


def test_rank_clear_winner_ties_and_biased_rows():
  rows = [
      row("slow_tied", 1.0, 0.6, 1.4, seconds=3.0),
      row("best_alone", 0.1, 0.08, 0.12, seconds=5.0),
      row("cheap_tied", 1.2, 0.9, 1.6, seconds=1.0),
      row("far", 9.0, 8.0, 10.0, seconds=1.0),
      row("biased_fast", 0.01, 0.005, 0.02, seconds=0.5, unbiased=False,
          bias2=0.3, bias2_lo=0.2, bias2_hi=0.4, relative_bias=0.5,
          relative_bias_hi=0.6),
      row("failed_check", 0.02, 0.01, 0.03, seconds=0.5, exact_pass=False),
      row("not_finite", math.nan, math.nan, math.nan, seconds=0.5),
  ]
  ranked = advise.rank(rows)
  assert [(r["name"], r["rank"]) for r in ranked] == [
      ("best_alone", 1), ("cheap_tied", 2), ("slow_tied", 2), ("far", 3),
      ("biased_fast", None), ("failed_check", None), ("not_finite", None)]
  assert ranked[1]["tied_with"] == ["slow_tied"]
  assert ranked[0]["tied_with"] == []
  name, reason = advise.recommend(ranked)
  assert name == "best_alone"
  assert "lowest variance x time" in reason and "10x below the next" in reason
  # The biased row with less work is named with its bias, not recommended.
  assert "biased_fast has less variance x time but is biased" in reason
  assert "its squared bias per parameter: 0.3 (95% [0.2, 0.4])" in reason


def test_rank_tie_prefers_the_cheaper_step():
  ranked = advise.rank([row("a", 1.0, 0.5, 1.5, seconds=2.0),
                        row("b", 1.3, 1.1, 1.8, seconds=1.0)])
  assert [(r["name"], r["rank"]) for r in ranked] == [("b", 1), ("a", 1)]
  name, reason = advise.recommend(ranked)
  assert name == "b" and reason.startswith("b: tie on variance x time with a")
  # Disjoint intervals: no tie, the lower work wins whatever its cost.
  ranked = advise.rank([row("a", 1.0, 0.5, 1.05, seconds=2.0),
                        row("b", 1.3, 1.1, 1.8, seconds=1.0)])
  assert [(r["name"], r["rank"]) for r in ranked] == [("a", 1), ("b", 2)]
  assert advise.recommend(advise.rank([row("x", 1, 1, 1, 1, False)]))[0] \
      is None


def test_bootstrap_intervals_cover_known_values():
  rng = np.random.default_rng(0)
  size, n = 300, 16
  mean = rng.normal(size=size)
  reference = [mean + rng.normal(size=(n, size))]
  shifted = [mean + 0.3 + 0.1 * rng.normal(size=(n, size))]
  stats = advise.variance_statistics(reference, [("a", 100), ("b", 200)],
                                     np.random.default_rng(1), 200)
  v, lo, hi = stats["total"]
  assert lo < 1.0 < hi and lo < v < hi
  assert stats["a"][0] * 100 + stats["b"][0] * 200 == pytest.approx(300 * v)
  bias = advise.bias_statistics(shifted, reference, np.random.default_rng(1),
                                200)
  assert bias["bias2_lo"] < 0.09 < bias["bias2_hi"]
  assert bias["relative_bias"] == pytest.approx(0.3, abs=0.1)


def test_bias_of_draws_sharing_their_keys_is_not_over_corrected():
  """Draw i of both estimators comes from one key: strongly correlated
  pairs. The squared bias's interval covers its true value (0.0004 per
  parameter, a 0.02 shift); corrected as for independent sets it fell
  entirely below 0 (the straight-through rows of the advisor at 20k steps)."""
  rng = np.random.default_rng(0)
  size, n = 400, 16
  covered = 0
  for _ in range(20):
    common = rng.normal(size=(n, size))
    reference = [common]
    shifted = [common + 0.02 + 0.01 * rng.normal(size=(n, size))]
    bias = advise.bias_statistics(shifted, reference, rng, 200)
    assert bias["bias2_hi"] > 0, bias
    covered += bias["bias2_lo"] < 0.0004 < bias["bias2_hi"]
  assert covered >= 16  # 95% intervals: 19 of 20 expected
  with pytest.raises(ValueError, match="paired draws"):
    advise.bias_statistics([common[:8]], [common], rng, 10)


def test_candidates_and_unbiased_sets():
  assert advise.candidates(("bernoulli",)) == list(
      registry.names(family="bernoulli", kind=registry.LAYER))
  mixed = advise.candidates(("categorical", "bernoulli"))
  assert "categorical:arsm,bernoulli:reinforce" in mixed
  assert "categorical:reinforce,bernoulli:disarm" in mixed
  assert "rebar" in mixed and "reinforce" not in mixed  # already a pair
  # estimator=auto's defaults: the registry's short list, unbiased, and
  # for a mixed model the pairs whose varied estimator is on it.
  assert advise.candidates(("bernoulli",), auto=True) == [
      "reinforce_loo", "disarm", "muprop_baseline"]
  for family in registry.FAMILIES:
    short = registry.names(family=family, kind=registry.LAYER, auto=True)
    assert short and all(registry.get(n).unbiased_for for n in short)
  mixed_auto = advise.candidates(("categorical", "bernoulli"), auto=True)
  assert "categorical:disarm_stick_breaking_iw,bernoulli:reinforce" in (
      mixed_auto)
  assert "categorical:reinforce,bernoulli:disarm" in mixed_auto
  assert "reinforce_loo" in mixed_auto  # on both families' lists
  assert set(mixed_auto) < set(mixed)
  assert advise.is_unbiased("nvil", ("bernoulli",))
  assert not advise.is_unbiased("concrete", ("bernoulli",))
  assert not advise.is_unbiased("categorical:gumbel_rao,bernoulli:disarm",
                                ("categorical", "bernoulli"))


def _biased_disarm(key, logits, f, noise=None):
  return 2.0 * bernoulli.disarm(key, logits, f, noise=noise)


def test_bias_check_catches_a_biased_estimator(monkeypatch):
  # Registered as unbiased, so only the exact check can tell.
  entry = registry.Entry(
      "biased_disarm", registry.LAYER,
      {"bernoulli": protocol.one_layer(_biased_disarm)}, registry.GRAD_F,
      {"bernoulli": "2 evaluations of f"}, "a test's own")
  monkeypatch.setitem(registry.ENTRIES, "biased_disarm", entry)
  c = sbn_linear.get_config()
  c.num_latents, c.batch_size = 3, 8
  budget = advise.Budget(num_draws=64, num_batches=1, tune_steps=0,
                         timing_repeats=1, timing_seconds=0.005,
                         bootstrap=20)
  advice = advise.advise(c, budget=budget,
                         names=["reinforce", "disarm", "biased_disarm"],
                         log=lambda _: None)
  rows = {r["name"]: r for r in advice.rows}
  assert rows["disarm"]["exact_pass"] and rows["reinforce"]["exact_pass"]
  assert not rows["biased_disarm"]["exact_pass"]
  assert rows["biased_disarm"]["exact_max_z"] > rows["biased_disarm"][
      "exact_threshold"] > rows["disarm"]["exact_max_z"]
  assert rows["biased_disarm"]["rank"] is None
  assert advice.recommendation in ("reinforce", "disarm")
  assert (rows["reinforce"]["evals"], rows["disarm"]["evals"]) == (1, 2)
  assert "FAIL" in advise.markdown(advice)


def test_programs_kept_across_calls_compile_once_and_advise_the_same(
    monkeypatch):
  """estimator=auto's later decisions reuse the first one's compiled steps
  (`advise.advise(programs=)`): no step is built again, and the advice is the
  one freshly compiled programs give (no timing: a function of the state);
  the reference, not compared, is not compiled."""
  c = sbn_linear.get_config()
  c.num_latents, c.batch_size = 3, 8
  budget = advise.Budget(num_draws=8, num_batches=1, tune_steps=2,
                         bootstrap=20, bias_check=False, timing=False)
  built = []
  make_step = advise.make_step
  monkeypatch.setattr(advise, "make_step",
                      lambda exp: built.append(exp.spec.name) or make_step(exp))
  names = ["reinforce", "disarm", "relax"]
  programs = {}
  advise.advise(c, budget=budget, names=names, log=lambda _: None,
                programs=programs)
  assert sorted(built) == sorted(names)
  assert set(programs) == set(names) | {"base (reinforce)"}
  loads = []
  load_data = train.load_data
  monkeypatch.setattr(train, "load_data",
                      lambda config: loads.append(1) or load_data(config))
  again = advise.advise(c, budget=budget, names=names, log=lambda _: None,
                        programs=programs)
  assert len(built) == len(names)  # nothing compiled the second time
  assert not loads  # nor the data loaded again
  fresh = advise.advise(c, budget=budget, names=names, log=lambda _: None)
  assert len(built) == 2 * len(names)
  for kept, new in zip(again.rows, fresh.rows):
    assert kept["name"] == new["name"]
    assert kept["variance"] == new["variance"], (kept, new)
  assert again.recommendation == fresh.recommendation
  # Untimed, a reference that is not a candidate gives its cost in f
  # evaluations without a compiled step.
  built.clear()
  fewer = advise.advise(c, budget=budget, names=["disarm", "relax"],
                        log=lambda _: None, programs=programs)
  assert not built and programs["reinforce (cost only)"].step is None
  assert {r["name"]: r["cost"] for r in fewer.rows}["disarm"] == 2


def test_custom_model_mixed_families_and_a_checkpoint(tmp_path):
  c = sbn_mnist.get_config()
  c.model = "examples/custom_model.py:make"
  c.num_latents = 8
  exp = train.build(c)
  state = train.init_state(exp, c.seed)
  state = state._replace(params=jax.tree.map(lambda p: p + 0.5, state.params),
                         step=jnp.asarray(7, jnp.int32))
  checkpoints.Checkpointer(str(tmp_path / "checkpoints")).save(7, state)
  (tmp_path / "config.json").write_text(json.dumps(c.to_dict()))
  params, step = advise.restore_params(c, str(tmp_path))
  assert step == 7
  assert jax.tree.all(jax.tree.map(
      lambda a, b: bool(jnp.all(a == b)), params, state.params))

  names = ["categorical:reinforce,bernoulli:reinforce",
           "categorical:reinforce,bernoulli:disarm"]
  advice = advise.advise(c, params, step, TINY, names, log=lambda _: None)
  assert {r["name"] for r in advice.rows} == set(names)
  assert advice.modules == ["encoder_c", "encoder_h"]
  assert advice.recommendation in names
  for r in advice.rows:
    assert r["variance_lo"] <= r["variance_hi"] and r["seconds"] > 0
    assert math.isfinite(r["work"]) and set(r["modules"]) == {
        "encoder_c", "encoder_h"}
  text = advise.markdown(advice)
  assert "Variance per encoder module" in text and "encoder_h" in text


# Every config in configs/ and the bring-your-own-model example, each with
# the reference and one or two more estimators (its own where it names a
# layer estimator; biased, tuned and mixed-family ones among them), shortened
# by the draw and step counts. The full candidate list is the same code path
# with more names (docs/results/advisor_*.md).
# config -> (--estimators, the biased ones among them); a name the model
# refuses is listed as not measured, with its reason.
EVERY_CONFIG = {
    "catvae_mnist": ("reinforce,gumbel_softmax", {"gumbel_softmax"}),
    "gaussian_vae_mnist": ("reinforce,pathwise", set()),
    "sbn3_mnist_iw": ("reinforce,disarm", set()),
    "sbn_disarm": ("reinforce,disarm", set()),
    "sbn_linear": ("reinforce,disarm,concrete", {"concrete"}),
    "sbn_linear2": ("reinforce,disarm", set()),
    "sbn_mnist": ("reinforce,rebar", set()),
    "sbn_omniglot": ("reinforce,disarm", set()),
    "sbn_rodeo": ("reinforce,rodeo", set()),
    "examples/custom_model.py:make": (
        "categorical:reinforce,bernoulli:reinforce,"
        "categorical:straight_through_gumbel,bernoulli:disarm,"
        "categorical:gumbel_softmax,bernoulli:disarm",
        {"categorical:straight_through_gumbel,bernoulli:disarm"}),
}
TINY_FLAGS = " ".join(f"--{name}={value}"
                      for name, value in TINY_BUDGET.items())
# The command as typed: the README's (configs/sbn_linear.py) and a user's
# model through --config.model. The other configs take the same function
# (`advise.advise`, `advise.write`) in this process, with the Budget the
# flags above make: the command's own path is the same for every config, and
# each config's flags are parsed by its training command (tests/test_cli.py).
AS_TYPED = ("sbn_linear", "examples/custom_model.py:make")


def test_every_config_is_in_the_table():
  on_disk = {p.stem for p in user_shell.ROOT.joinpath("configs").glob("*.py")
             if p.stem != "__init__"}
  assert on_disk == {c for c in EVERY_CONFIG if "/" not in c}
  assert set(AS_TYPED) <= set(EVERY_CONFIG)


def test_a_mixed_models_estimators_are_grouped_from_the_flags_list():
  assert advise.group_names(
      ["categorical:reinforce", "bernoulli:disarm", "categorical:indecater",
       "bernoulli:reinforce", "rebar"]) == [
           "categorical:reinforce,bernoulli:disarm",
           "categorical:indecater,bernoulli:reinforce", "rebar"]
  assert advise.group_names(["reinforce", " disarm", ""]) == [
      "reinforce", "disarm"]


def _advise_as_typed(tmp_path, config: str, estimators: str
                     ) -> tuple[str, pathlib.Path]:
  """The command in a user's directory: (its stdout, its output_dir)."""
  cwd = user_shell.user_dir(tmp_path)
  target = (f"--config=configs/sbn_mnist.py --config.model={config}"
            if "/" in config else f"--config=configs/{config}.py")
  result = user_shell.run(
      f"python -m rebar_jax.advise {target} --estimators={estimators} "
      f"{TINY_FLAGS} --output_dir=out", cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout, cwd / "out"


def _advise_here(tmp_path, config: str, estimators: str
                 ) -> tuple[str, pathlib.Path]:
  """`advise.advise` and `advise.write` as the command calls them, with the
  budget TINY_FLAGS gives it: (what the command would print, the
  output_dir)."""
  c = importlib.import_module(f"configs.{config}").get_config()
  if c.data_source == "local":  # the paper data, wherever they were found
    c.data_dir = str(paper_data.require())
  advice = advise.advise(c, None, 0, advise.Budget(**TINY_BUDGET),
                         advise.group_names(estimators.split(",")),
                         log=lambda _: None)
  advise.write(advice, str(tmp_path / "out"))
  return (f"{advise.markdown(advice)}\nRecommendation: {advice.reason}\n",
          tmp_path / "out")


@pytest.mark.parametrize("config", sorted(EVERY_CONFIG))
def test_advice_on_every_config(tmp_path, config):
  if config == "sbn_omniglot":
    paper_data.require()
  estimators, biased = EVERY_CONFIG[config]
  names = advise.group_names(estimators.split(","))
  stdout, out = (_advise_as_typed if config in AS_TYPED else _advise_here)(
      tmp_path, config, estimators)
  assert "Recommendation: " in stdout
  assert "| rank | estimator |" in stdout
  for ext in ("md", "csv", "json", "png"):
    assert (out / f"advice.{ext}").stat().st_size > 0
  recorded = json.loads((out / "advice.json").read_text())
  refused = {n for n in names if "gumbel_softmax,bernoulli" in n}
  assert {r["name"] for r in recorded["rows"]} == set(names) - refused
  assert [n for n, why in recorded["skipped"]
          if "cannot be combined with per-layer" in why] == list(refused)
  for r in recorded["rows"]:  # a number for each, inside its interval
    assert 0 <= r["variance_lo"] <= r["variance"] <= r["variance_hi"], r
    assert math.isfinite(r["work"]) and r["seconds"] > 0, r
    assert (r["rank"] is None) == (r["name"] in biased), r
    assert ("bias2" in r) == (r["name"] in biased), r
  assert recorded["recommendation"] in set(names) - biased


AUTO = ("python -m rebar_jax.train --config=configs/sbn_linear.py "
        "--config.estimator=auto --config.advise_every=5000")
AUTO_SHORT = {"num_latents": 5, "batch_size": 8, "num_steps": 100,
              "advise_every": 50, "steps_per_call": 25,
              "checkpoint_every": 25, "eval_every": 100,
              "eval_num_samples": 2, "eval_max_examples": 50,
              "diagnostic_draws": 0, "progress_bar": False}


@pytest.mark.optimized  # in-process as the command compiles: the same numbers
def test_auto_decides_records_and_resumes_to_the_same_run(tmp_path):
  """The documented estimator=auto command, shortened (a 5-unit model, 100
  steps, advice at 0 and 50 among the registry's default candidates; the
  current estimator kept where it ties with the leader), run as typed; then
  the
  same config in-process, stopped after 75 steps and resumed: the decisions,
  the metrics rows and the final metrics are the uninterrupted run's."""
  cwd = user_shell.user_dir(tmp_path)
  flags = AUTO.replace("--config.advise_every=5000", "") + " ".join(
      f" --config.{k}={v}" for k, v in AUTO_SHORT.items()) + " --workdir=a"
  done = user_shell.run(flags, cwd)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.count("estimator=auto at step") == 2, done.stdout
  record = json.loads((cwd / "a" / "run.json").read_text())
  decisions = [(d["step"], d["estimator"]) for d in record["advice"]]
  assert [s for s, _ in decisions] == [0, 50]
  defaults = registry.names(family="bernoulli", kind=registry.LAYER,
                            auto=True)
  assert all(n in defaults for _, n in decisions)
  for step in (0, 50):  # the short list was measured, and nothing else
    rows = json.loads((cwd / "a" / "advice" / f"step_{step}" / "advice.json"
                       ).read_text())["rows"]
    assert sorted(r["name"] for r in rows) == sorted(defaults)
    for ext, written in (("md", True), ("csv", True), ("png", False)):
      assert (cwd / "a" / "advice" / f"step_{step}" / f"advice.{ext}"
              ).exists() == written, ext
  assert [h["step"] for h in record["history"]
          if h["event"] == "advice"] == [0, 50]
  current = train.AUTO_START
  for step in (0, 50):  # the leader, unless the current one ties with it
    table = cwd / "a" / "advice" / f"step_{step}" / "advice.json"
    advice = json.loads(table.read_text())
    leaders = {r["name"] for r in advice["rows"] if r["rank"] == 1}
    current = current if current in leaders else advice["recommendation"]
    assert dict(decisions)[step] == current, (step, advice["rows"])

  config = sbn_linear.get_config()
  config.estimator = "auto"
  for k, v in AUTO_SHORT.items():
    config[k] = v
  workdir = str(tmp_path / "b")
  partial = train.train_and_evaluate(config, workdir, stop_after=75)
  assert partial == {"step": 75}
  final = train.train_and_evaluate(config, workdir)
  resumed = json.loads((tmp_path / "b" / "run.json").read_text())
  assert [(d["step"], d["estimator"]) for d in resumed["advice"]] == decisions
  assert [h["event"] for h in resumed["history"]] == [
      "start", "advice", "advice", "resume"]
  expected = json.loads((cwd / "a" / "final_metrics.json").read_text())
  assert final == expected
  assert user_shell.rows(tmp_path / "b" / "metrics.jsonl") == (
      user_shell.rows(cwd / "a" / "metrics.jsonl"))


def test_auto_keeps_the_current_estimator_where_it_ties():
  ranked = advise.rank([row("a", 1.0, 0.8, 1.2, 2e-3),
                        row("b", 1.1, 0.9, 1.3, 1e-3),
                        row("c", 5.0, 4.0, 6.0, 1e-3)])
  name, reason = advise.recommend(ranked)
  advice = advise.Advice(ranked, name, reason, [], [], [])
  assert name == "b"  # the tie's cheaper step
  assert train.auto_decision("b", advice) == ("b", reason)
  kept, why = train.auto_decision("a", advice)
  assert kept == "a" and why.startswith("a: kept, tied with the leader")
  assert train.auto_decision("c", advice) == ("b", reason)  # behind: switch


def test_auto_options_are_refused_for_a_named_estimator():
  config = sbn_linear.get_config()
  config.estimator, config.advise_every = "disarm", 100
  with pytest.raises(errors.ConfigError,
                     match="config.advise_every=100 is for "
                           "config.estimator='auto' alone"):
    train.build(config)
