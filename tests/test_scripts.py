"""The scripts' pure helpers (tables, fits, the step servers), timing-free.

Each script defines its own absl flags, so each is imported in a fresh Python
process rather than in the test process.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The helpers are compiled like the in-process tests (tests/conftest.py).
FAST_COMPILE = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def run_with_script(module: str, body: str) -> dict:
  """Imports scripts/<module>.py in a new process, runs body, returns `out`."""
  code = textwrap.dedent(f"""
      import json, sys
      sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})
      from absl import flags
      flags.FLAGS(['test'])
      import {module} as m
      out = {{}}
  """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, cwd=ROOT, check=False, timeout=300,
                        env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_benchmark_alternation_servers_and_tables(tmp_path):
  out = run_with_script("benchmark", f"""
      import sys
      import numpy as np
      xs = np.array([24., 64., 256., 1024.])
      out['slope'] = m.slope(xs, 3.0 * xs ** 0.5)
      # Fake timers (no clock): a runs at 100 steps/s, b at 50, until the
      # whole machine slows down 2x from the 22nd turn on (after the 13
      # calibration turns and 4 pairs).
      calls = []
      def clock(name, rate):
        def timer(n):
          calls.append(name)
          return n / rate * (2.0 if len(calls) >= 22 else 1.0)
        return timer
      out['alt'] = m.interleaved(clock('a', 100.0), clock('b', 50.0),
                                 repeats=6, seconds=1.0)
      out['order'] = ''.join(calls[-12:])
      out['steps'] = m.block_steps(lambda n: n / 300.0, 100, 0.5)
      try:
        m.peer_server('/bin/false', 'rebar', 24, {str(tmp_path / 'x.npy')!r})
      except RuntimeError as e:
        out['missing'] = str(e)
      echo = m.StepServer([sys.executable, '-c',
          'import json, sys\\n'
          'print(json.dumps(dict(ready=True)), flush=True)\\n'
          'for l in sys.stdin: print(json.dumps(dict(seconds=int(l) / 1000)),'
          ' flush=True)'])
      out['echo'] = echo(500)
      echo.close()
      step = dict(model='linear', batch=24, num_latents=200, num_samples=1,
                  steps_per_sec=40.0, compile_s=1.0, flops_per_step=1e6,
                  temp_bytes=2**20, roofline_fraction=0.2, cost=2.5,
                  cost_q1=2.25, cost_q3=2.75)
      result = dict(
          machine='test', matmul_flops_per_sec=2e8,
          step_shape_matmul_flops_per_sec={{24: 1e8}},
          estimators_alone=[], repeats=7, block_seconds=0.5,
          train_step=[dict(step, estimator='rebar')],
          peer_storchastic=[
              dict(estimator='rebar', batch=24, a_steps_per_sec=40.0,
                   b_steps_per_sec=4.0, ratio=10.0, ratio_q1=9.5,
                   ratio_q3=11.0, roofline_fraction=0.2),
              dict(estimator='muprop', batch=24,
                   error='no Storchastic equivalent')],
          scaling={{}})
      out['md'] = m.markdown(result)
      out['compare'] = m.compare_markdown(dict(
          machine='test', here='abc', revision='def', repeats=7,
          block_seconds=0.5, rows=[dict(
              estimator='rebar', a_steps_per_sec=300.0, b_steps_per_sec=250.0,
              ratio=1.2, ratio_q1=1.1, ratio_q3=1.3)]))
  """)
  assert abs(out["slope"] - 0.5) < 1e-9
  alt = out["alt"]
  # The slowdown halves both sides' rates; every paired ratio stays 2.
  assert len(out["order"]) == 12
  assert alt["ratio"] == alt["ratio_q1"] == alt["ratio_q3"] == 2.0
  assert alt["a_steps_per_sec"] == 100.0 and alt["b_steps_per_sec"] == 50.0
  assert out["order"] == "abbaabbaabba"  # which side goes first alternates
  assert out["steps"] == 200  # 0.5 s at 300 steps/s, in units of 100 steps
  assert "step server exited" in out["missing"]
  assert out["echo"] == 0.5
  md = out["md"]
  assert "| rebar | 40.0 | 4.0 | 10.0x | 9.5-11.0 | 20.0 |" in md
  assert "| muprop | - | - (no Storchastic equivalent) | - | - | - |" in md
  # 20% of the 2e8 roofline is 40% of the 1e8 FLOP/s shape bound.
  assert ("| linear | 24 | rebar | 40.0 | 2.50 (2.25-2.75) | 1.0 | 20.0 | "
          "40.0 | 1.0 |") in md
  assert "| rebar | 300.0 | 250.0 | 1.200 | 1.100-1.300 |" in out["compare"]


def test_benchmark_breakdown_times_the_steps_parts():
  """The breakdown section's programs compile and run on the linear SBN
  (REINFORCE, 5-step chunks, one pair of tiny turns each: a smoke run, not
  a measurement), and its derived phases add up to the full step."""
  out = run_with_script("benchmark", """
      rows = m.breakdown(['reinforce'], 24, repeats=1, seconds=0.01, n=5)
      out['row'] = rows[0]
      out['md'] = m.breakdown_markdown(rows)
  """)
  r = out["row"]
  assert set(r["ratios"]) == {"loop", "noise", "one pass", "gradient",
                              "adam", "matmuls"}
  assert all(v > 0 for v in r["ratios"].values()), r
  assert r["full_us"] > 0 and r["loop_us"] > 0 and r["noise_us"] > 0
  t = {k: r["full_us"] / v for k, v in r["ratios"].items()}
  assert r["residual_us"] == pytest.approx(
      r["full_us"] - (t["noise"] + t["gradient"] + t["adam"] - t["loop"]))
  assert r["floor_us"] == pytest.approx(t["matmuls"] + t["adam"]
                                        - 2 * t["loop"])
  assert r["full_over_floor"] == pytest.approx(r["full_us"] / r["floor_us"])
  assert "| reinforce | %.0f |" % r["full_us"] in out["md"]


def test_benchmark_exports_a_revision_to_compare_with(tmp_path):
  if not os.path.exists(os.path.join(ROOT, ".git")):
    pytest.skip("not a git clone: --compare_to exports revisions with git")
  out = run_with_script("benchmark", f"""
      out['commit'] = m.export_revision('HEAD', {str(tmp_path)!r})
      try:
        m.export_revision('no-such-revision', {str(tmp_path)!r})
      except Exception as e:
        out['bad'] = str(e)
  """)
  assert out["commit"]
  assert (tmp_path / "rebar_jax" / "train.py").is_file()
  assert (tmp_path / "scripts" / "benchmark.py").is_file()
  assert "--compare_to=no-such-revision: git archive failed" in out["bad"]


def test_reproduce_best_elbo_and_curves(tmp_path):
  runs = {}
  for est, offset in (("rebar", 0.0), ("disarm", -5.0)):
    workdir = tmp_path / est
    workdir.mkdir()
    with open(workdir / "metrics.jsonl", "w") as fh:
      for step in range(100, 3100, 100):
        row = {"step": step, "train_elbo": offset - 200.0 + step / 100}
        if step % 1000 == 0:
          row.update(valid_elbo=offset - 150.0 + step / 1000,
                     grad_log_variance=-1.0)
        fh.write(json.dumps(row) + "\n")
    runs[est] = str(workdir)
  out = run_with_script("reproduce", f"""
      runs = {runs!r}
      out['best'] = m.best_train_elbo(runs['rebar'])
      out['md'] = m.curves_markdown_and_plot(
          {{('mnist_linear1', e): w for e, w in runs.items()}},
          {str(tmp_path / 'curves.png')!r})
      results = [dict(row='mnist_linear1', estimator=e, learning_rate=lr,
                      seed=seed, valid_elbo=v + seed)
                 for e, lr, v in (('rebar', 1e-3, -100.0),
                                  ('rebar', 1e-4, -99.0),
                                  ('disarm', 1e-3, -98.0))
                 for seed in (0, 1)]
      out['grid'] = m.lr_grid_markdown(results)
      m.lr_grid_plot(results, {str(tmp_path / 'lr.png')!r})
  """)
  # Train ELBO rises by 1 per 100 steps: the best 1000-step window is the last
  # 10 rows (steps 2100..3000, ELBO -179..-170), mean -174.5.
  assert abs(out["best"] - (-200.0 + 25.5)) < 1e-9
  md = "\n".join(out["md"])
  # Validation beside validation: the last column is the paper's highest
  # validation ELBO (REBAR's -114.32), not its training ELBO.
  assert ("| mnist_linear1 | rebar | -149.00 | -148.00 | -147.00 | -114.32 |"
          in md)
  assert "| mnist_linear1 | disarm | -154.00 | -153.00 | -152.00 |  |" in md
  assert (tmp_path / "curves.png").stat().st_size > 0
  # Means over the two seeds; the best lr in bold; a missing cell empty.
  assert "| mnist_linear1 | rebar | -99.50 | **-98.50** |" in out["grid"]
  assert "| mnist_linear1 | disarm | **-97.50** |  |" in out["grid"]
  assert (tmp_path / "lr.png").stat().st_size > 0


# The RELAX paper's tables as its authors wrote them (duvenaud/relax,
# paper/generalized_rebar.tex at e9464a13f949): highest training ELBO, Table 2,
# columns Concrete, NVIL, MuProp, REBAR, RELAX ...
RELAX_TABLE_2 = {
    "mnist_nonlinear": [-102.2, -101.5, -101.1, -81.01, -78.13],
    "mnist_linear1": [-111.3, -112.5, -111.7, -111.6, -111.20],
    "mnist_linear2": [-99.62, -99.6, -99.07, -98.22, -98.00],
    "omniglot_nonlinear": [-110.4, -109.58, -108.72, -56.76, -56.12],
    "omniglot_linear1": [-117.23, -117.44, -117.09, -116.63, -116.57],
    "omniglot_linear2": [-109.95, -109.98, -109.55, -108.71, -108.54],
}
# ... and highest validation ELBO (appendix), columns REBAR, RELAX.
RELAX_VALID = {
    "mnist_nonlinear": [-111.12, -119.19],
    "mnist_linear1": [-114.32, -113.62],
    "mnist_linear2": [-101.20, -100.85],
    "omniglot_nonlinear": [-127.51, -128.20],
    "omniglot_linear1": [-122.44, -122.11],
    "omniglot_linear2": [-115.83, -115.42],
}


def test_reproduce_published_numbers_are_the_papers():
  out = run_with_script("reproduce", """
      out['train'] = {k: list(v) for k, v in m.PUBLISHED.items()}
      out['valid'] = {k: list(v) for k, v in m.PUBLISHED_VALID.items()}
      out['cells'] = {e: [m.published(row, e), m.published(row, e, 'valid')]
                      for row in ['mnist_linear1'] for e in
                      ['concrete', 'nvil', 'muprop', 'muprop_baseline',
                       'rebar', 'relax', 'disarm']}
      out['nonlinear'] = [m.published('mnist_nonlinear', e) for e in
                          ['concrete', 'nvil', 'muprop', 'rebar', 'relax']]
  """)
  assert out["train"] == RELAX_TABLE_2
  assert out["valid"] == RELAX_VALID
  assert out["cells"] == {
      "concrete": [-111.3, None], "nvil": [-112.5, None],
      "muprop": [-111.7, None], "muprop_baseline": [-111.7, None],
      "rebar": [-111.6, -114.32], "relax": [-111.20, -113.62],
      "disarm": [None, None]}
  # The nonlinear row in its own columns (once shifted by one).
  assert out["nonlinear"] == [-102.2, -101.5, -101.1, -81.01, -78.13]


def test_reproduce_table_puts_train_beside_train_and_valid_beside_valid():
  out = run_with_script("reproduce", """
      best = [dict(seed=s, best_train_elbo=-120.0 + s, best_valid_elbo=-121.0
                   + s, valid_elbo=-122.0 + s, test_iw100=-110.0 + s)
              for s in (0, 1)]
      out['rebar'] = m.table_row('mnist_linear1', 'rebar', 3e-4, best)
      out['disarm'] = m.table_row('mnist_linear1', 'disarm', 3e-4, best)
      out['mnist'] = m.header(1000, ['3e-4'], ['0'], ['mnist_linear1'])
      out['omniglot'] = m.header(1000, ['3e-4'], ['0'], ['omniglot_linear1'])
      out['columns'] = m.TABLE_HEADER[0]
  """)
  assert out["columns"].startswith(
      "| row | estimator | lr | best train ELBO | published best train ELBO | "
      "gap | best valid ELBO | published best valid ELBO | gap |")
  # Means over the seeds; gaps are ours minus the paper's.
  assert out["rebar"] == ("| mnist_linear1 | rebar | 0.0003 | -119.50 | "
                          "-111.6 | -7.90 | -120.50 | -114.32 | -6.18 | "
                          "-121.50 | -109.50 |")
  assert out["disarm"] == ("| mnist_linear1 | disarm | 0.0003 | -119.50 |  |"
                           "  | -120.50 |  |  | -121.50 | -109.50 |")
  assert "chardata.mat" not in "\n".join(out["mnist"])
  assert "chardata.mat" in "\n".join(out["omniglot"])
  assert "binarizes them dynamically" in "\n".join(out["omniglot"])


def test_report_groups_runs_and_aggregates_their_files(tmp_path):
  for name, estimator, seed, final in (("a", "rebar", 0, -100.0),
                                       ("b", "rebar", 1, -102.0),
                                       ("c", "disarm", 0, None)):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(
        {"estimator": estimator, "seed": seed}))
    if final is not None:
      (workdir / "final_metrics.json").write_text(json.dumps(
          {"test_elbo": final}))
    with open(workdir / "metrics.jsonl", "w") as fh:
      for step in (100, 200, 300):
        fh.write(json.dumps({"step": step, "valid_elbo": -step / 10 + seed,
                             "train_elbo": -step}) + "\n")
      fh.write('{"step": 400, "valid_')  # a torn last line is skipped
  out = run_with_script("report", f"""
      runs = [m.load_run(str(p)) for p in
              sorted(__import__('pathlib').Path({str(tmp_path)!r}).iterdir())]
      table = m.group_table(runs, ['estimator'],
                            ['test_elbo', 'valid_elbo:max', 'valid_elbo:last',
                             'train_elbo:best200'])
      out['md'] = m.markdown(table, ['estimator', 'runs', 'test_elbo',
                                     'valid_elbo:max', 'valid_elbo:last',
                                     'train_elbo:best200'])
      # Rows every 100 steps: 200 steps are two rows; 1000 steps, all three.
      out['best'] = [m.best_window_mean([100, 200, 300, 400],
                                        [-5.0, -1.0, -2.0, -9.0], n)
                     for n in (100, 200, 1000)]
      out['small'] = m.markdown(
          [dict(learning_rate=0.001, runs=1, snr=0.04561, elbo=-1.0)],
          ['learning_rate', 'runs', 'snr', 'elbo'])
      m.plot_curves(runs, ['estimator'], 'train_elbo',
                    {str(tmp_path / 'curves.png')!r})
      m.plot_curves(runs, ['estimator'], ['train_elbo', 'valid_elbo'],
                    {str(tmp_path / 'panels.png')!r})
      # --runs, comma-split by absl: a trial directory with commas in its
      # name is joined back; other pieces stay apart.
      import os
      d = {str(tmp_path)!r}
      os.makedirs(os.path.join(d, 'sweep', 'estimator=rebar,seed=0'))
      out['patterns'] = m.patterns([d + '/a', d + '/sweep/estimator=rebar',
                                    'seed=0', d + '/b', d + '/s*/*seed=0',
                                    d + '/missing'])
  """)
  # rebar: test_elbo mean of -100 and -102; valid max = mean(-10, -9); the
  # best 200 steps of train ELBO (-100, -200, -300) are the first two.
  assert "| rebar | 2 | -101.00 | -9.50 | -29.50 | -150.00 |" in out["md"]
  assert "| disarm | 1 | - | -10.00 | -30.00 | -150.00 |" in out["md"]
  assert out["best"] == [-1.0, -1.5, -4.25]
  assert "| 0.001 | 1 | 0.0456 | -1.00 |" in out["small"]  # not 0.00
  assert (tmp_path / "curves.png").stat().st_size > 0
  assert (tmp_path / "panels.png").stat().st_size > 0
  d = str(tmp_path)
  assert out["patterns"] == [d + "/a", d + "/sweep/estimator=rebar,seed=0",
                             d + "/b", d + "/s*/*seed=0", d + "/missing"]


def write_runs(root, runs):
  """Run directories as rebar_jax.train writes them: config.json,
  final_metrics.json and metrics.jsonl, one per (name, config, finals)."""
  for name, config, finals in runs:
    workdir = root / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "final_metrics.json").write_text(json.dumps(finals))
    with open(workdir / "metrics.jsonl", "w") as fh:
      for step in (100, 200):
        fh.write(json.dumps({"step": step, "train_elbo": -step}) + "\n")


# Test ELBO by estimator and seed, with known answers: rebar is ahead of nvil
# by 4.9-5.2 nats on every seed (a clear ordering); disarm and rebar swap
# places from seed to seed (mean difference -0.1, a tie); relax ran one seed.
RANKED_RUNS = {
    "rebar": {0: -100.0, 1: -101.0, 2: -99.5},
    "nvil": {0: -105.0, 1: -106.2, 2: -104.4},
    "disarm": {0: -100.5, 1: -100.0, 2: -100.3},
    "relax": {0: -98.0},
}


def test_report_intervals_and_paired_rankings_on_known_answers(tmp_path):
  write_runs(tmp_path, [
      (f"{est}-{seed}", {"estimator": est, "seed": seed, "iw_samples": 1},
       {"test_elbo": value})
      for est, by_seed in RANKED_RUNS.items()
      for seed, value in by_seed.items()])
  out = run_with_script("report", f"""
      import pathlib
      runs = [m.load_run(str(p)) for p in
              sorted(pathlib.Path({str(tmp_path)!r}).iterdir())]
      out['interval'] = m.interval([1.0, 2.0, 3.0])
      out['one'] = m.interval([4.0])
      out['table'] = m.group_table(runs, ['estimator'], ['test_elbo'])
      out['md'] = m.markdown(out['table'], ['estimator', 'runs', 'test_elbo',
                                            'test_elbo ±95%'])
      out['higher'] = m.pairwise(runs, ['estimator'], 'test_elbo')
      out['lower'] = m.pairwise(runs, ['estimator'], 'test_elbo',
                                higher_is_better=False)
      out['pairs_md'] = m.pairwise_markdown(out['higher'])
  """)
  # mean 2, sd 1: half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051.
  np.testing.assert_allclose(out["interval"], [2.0, 2.484138], rtol=1e-6)
  assert out["one"] == [4.0, None]
  table = {r["estimator"]: r for r in out["table"]}
  assert table["relax"]["test_elbo ±95%"] == "no interval (1 run)"
  assert "| relax | 1 | -98.00 | no interval (1 run) |" in out["md"]
  np.testing.assert_allclose(table["rebar"]["test_elbo"], -100.1666667)
  verdicts = {(r["a"], r["b"]): r for r in out["higher"]}
  assert len(verdicts) == 6  # every pair of the four groups, once
  # Clear ordering: rebar - nvil = 5.0, 5.2, 4.9 on the three seeds.
  clear = verdicts[("nvil", "rebar")]
  assert clear["seeds"] == 3 and clear["verdict"] == "rebar ahead"
  np.testing.assert_allclose(clear["difference"], -5.0333333)
  assert clear["high"] < 0
  # Tie: disarm - rebar = -0.5, +1.0, -0.8; the interval contains 0.
  tie = verdicts[("disarm", "rebar")]
  assert tie["verdict"] == "tie" and tie["low"] < 0 < tie["high"]
  np.testing.assert_allclose(tie["difference"], -0.1)
  # One seed: relax beats every group on seed 0, yet no ranking is given.
  for pair in (("disarm", "relax"), ("nvil", "relax"), ("rebar", "relax")):
    assert verdicts[pair]["seeds"] == 1
    assert verdicts[pair]["verdict"] == "one seed; no interval"
    assert verdicts[pair]["low"] is None
  # Lower-is-better flips the winner, not the tie.
  lower = {(r["a"], r["b"]): r["verdict"] for r in out["lower"]}
  assert lower[("nvil", "rebar")] == "nvil ahead"
  assert lower[("disarm", "rebar")] == "tie"
  assert ("| test_elbo | nvil | rebar | 3 | -5.03 | [-5.41, -4.65] | rebar "
          "ahead |") in out["pairs_md"]
  # nvil - relax on seed 0 alone: -105.0 - (-98.0), and no interval.
  assert ("| test_elbo | nvil | relax | 1 | -7.00 | - | one seed; no "
          "interval |") in out["pairs_md"]


def test_report_command_marks_ties_and_pairs_only_within_keys(tmp_path):
  runs = tmp_path / "runs"
  runs.mkdir()
  # Two values of K; --pair_within=iw_samples compares estimators at equal K
  # only (2 pairs, not 6).
  write_runs(runs, [
      (f"{est}-{k}-{seed}", {"estimator": est, "seed": seed, "iw_samples": k},
       {"test_elbo": value + k})
      for k in (5, 20) for est, by_seed in RANKED_RUNS.items()
      if est in ("rebar", "disarm") for seed, value in by_seed.items()])
  output = tmp_path / "out" / "report"
  proc = subprocess.run(
      [sys.executable, "scripts/report.py", f"--runs={runs}/*",
       "--keys=estimator,iw_samples", "--metrics=test_elbo",
       "--rank=test_elbo", "--pair_within=iw_samples", f"--output={output}"],
      capture_output=True, text=True, cwd=ROOT, check=False, timeout=300,
      env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  md = (tmp_path / "out" / "report.md").read_text()
  assert md.count("| test_elbo | disarm, ") == 2
  assert "| test_elbo | disarm, 5 | rebar, 5 | 3 | -0.10 |" in md
  assert "| test_elbo | disarm, 20 | rebar, 20 | 3 | -0.10 |" in md
  assert md.count("| tie |") == 2 and "disarm, 5 | rebar, 20" not in md
  assert "test_elbo ±95%" in md
  assert (tmp_path / "out" / "report.csv").read_text().startswith(
      "estimator,iw_samples,runs,test_elbo,test_elbo ±95%")


def test_bias_command_writes_its_table_and_figure(tmp_path):
  # The command of scripts/bias.py's docstring, with fewer draws. What the
  # biases prove is asserted in test_bernoulli.py and test_categorical.py;
  # here: every (estimator, objective) measured, finite, tabulated, plotted.
  proc = subprocess.run(
      [sys.executable, "scripts/bias.py", f"--output_dir={tmp_path}",
       "--num_draws=8192"], capture_output=True, text=True, cwd=ROOT,
      check=False, timeout=600, env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((tmp_path / "bias.json").read_text())
  assert len(rows) == 3 * (5 + 6)
  assert all(r[k] >= 0 for r in rows for k in ("relative_bias", "max_z"))
  md = (tmp_path / "bias.md").read_text()
  assert "| reinmax |" in md and "| gapped_straight_through |" in md
  assert (tmp_path / "bias.png").stat().st_size > 0


def test_variance_command_on_the_categorical_vae(tmp_path):
  # scripts/variance.py at equal cost on the categorical VAE (embedded
  # digits, few draws, two seeds): every estimator measured at the initial
  # point on each seed's own batch, its log variance finite, its f
  # evaluations counted, tabulated with intervals over the seeds and paired
  # comparisons, and plotted; interrupted, it resumes from the rows it saved.
  names = ["reinforce_loo@2", "disarm_stick_breaking", "nvil"]
  command = [sys.executable, "scripts/variance.py", f"--output_dir={tmp_path}",
             "--model=catvae", f"--estimators={','.join(names)}",
             "--num_draws=8", "--tune_steps=2", "--seeds=0,1"]
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                        check=False, timeout=600, env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((tmp_path / "variance.json").read_text())
  assert [(r["estimator"], r["seed"]) for r in rows] == [
      (n, s) for n in names for s in (0, 1)]
  assert all(r["point"] == "init" and np.isfinite(r["log_variance"])
             for r in rows)
  assert {r["estimator"]: r["evaluations"] for r in rows} == {
      "reinforce_loo@2": 2.0, "disarm_stick_breaking": 2.0, "nvil": 1.0}
  # The seeds measure different batches and draws.
  assert rows[0]["log_variance"] != rows[1]["log_variance"]
  md = (tmp_path / "variance.md").read_text()
  assert "| reinforce_loo@2 | 2 | init | " in md and "| nvil | 1 | init | " in md
  assert md.count("] |") >= 2 * len(names)  # two intervals per entry
  assert "| equal evaluations | log_variance | init | " in md
  assert (tmp_path / "variance.png").stat().st_size > 0
  assert not (tmp_path / "variance.partial.json").exists()

  # Interrupted after the first two estimators' rows (saved as measured):
  # the same command keeps those rows and measures only the rest, as before.
  settings = {"points": ["init"], "states": {}, "model": "catvae",
              "nonlinear": False, "data_source": "embedded", "data_dir": "",
              "copula": "dirichlet", "num_draws": 8, "tune_steps": 2,
              "estimator_states_from": ""}
  kept = [dict(r) for r in rows[:4]]
  kept[0]["log_variance"] = 123.0  # a row taken as saved, not measured again
  partial = tmp_path / "variance.partial.json"
  partial.write_text(json.dumps({"settings": settings, "rows": kept}))
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                        check=False, timeout=600, env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Resuming: 4 rows measured earlier" in proc.stdout
  again = json.loads((tmp_path / "variance.json").read_text())
  assert again[:4] == kept
  np.testing.assert_allclose([r["log_variance"] for r in again[4:]],
                             [r["log_variance"] for r in rows[4:]], rtol=1e-6)
  assert not partial.exists()
  # Rows saved with other settings are not mixed in: one line names them.
  partial.write_text(json.dumps({"settings": dict(settings, num_draws=16),
                                 "rows": kept}))
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                        check=False, timeout=600, env=FAST_COMPILE)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "measured with other num_draws" in proc.stderr
  # A --checkpoints entry that is not a run is named (a directory named like
  # a sweep trial, commas and all, is one entry).
  (tmp_path / "a=1,b=2").mkdir()
  proc = subprocess.run(command + [f"--checkpoints={tmp_path}/a=1,b=2"],
                        capture_output=True, text=True, cwd=ROOT, check=False,
                        timeout=600, env=FAST_COMPILE)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert (f"--checkpoints: {tmp_path}/a=1,b=2 is not a training run's "
          "workdir") in proc.stderr


def test_variance_seed_statistics_have_the_known_answer(tmp_path):
  """scripts/variance.py's summary on synthetic rows of 3 seeds: means and t
  intervals; at equal evaluations "b" is 0.5 above "a" at every seed (a
  ahead); "c" (201 evaluations) is lowest, ahead of both by log variance; by
  log(variance x time) "c" is lowest in mean but its paired differences
  with "a" change sign (a tie), and only pairs with the lowest are listed."""
  out = run_with_script("variance", f"""
      rows = []
      lv = {{"a": [-3.0, -3.1, -2.9], "b": [-2.5, -2.6, -2.4],
            "c": [-10.0, -9.0, -11.0]}}
      lvt = {{"a": [-9.0, -9.5, -8.5], "b": [-8.0, -8.1, -7.9],
             "c": [-9.5, -8.0, -10.5]}}
      for name, evals in (("a", 2.0), ("b", 2.0), ("c", 201.0)):
        for seed in range(3):
          rows.append({{"estimator": name, "point": "init", "seed": seed,
                       "evaluations": evals, "log_variance": lv[name][seed],
                       "log_variance_x_time": lvt[name][seed], "snr": 0.1,
                       "seconds_per_draw": 1e-3}})
      cells, pairs = m.summarize(rows)
      out["cells"] = cells
      out["pairs"] = pairs
      out["md"] = m.markdown(cells, pairs, [0, 1, 2])
      m.plot(cells, {str(tmp_path / "v.png")!r})
  """)
  cells = {c["estimator"]: c for c in out["cells"]}
  assert list(cells) == ["a", "b", "c"]
  np.testing.assert_allclose(cells["a"]["log_variance"], -3.0)
  np.testing.assert_allclose(cells["a"]["log_variance ±95%"],
                             4.303 * 0.1 / np.sqrt(3), rtol=1e-3)
  pairs = {(p["scope"], p["metric"], p["a"], p["b"]): p for p in out["pairs"]}
  equal = [k for k in pairs if k[0] == "equal evaluations"]
  assert equal == [("equal evaluations", "log_variance", "a", "b")]
  np.testing.assert_allclose(pairs[equal[0]]["difference"], -0.5)
  assert pairs[equal[0]]["verdict"].endswith("a ahead")
  lowest = {k: p["verdict"] for k, p in pairs.items() if k[0] == "lowest"}
  assert lowest == {
      ("lowest", "log_variance", "a", "c"): "init, 201.0, c ahead",
      ("lowest", "log_variance", "b", "c"): "init, 201.0, c ahead",
      ("lowest", "log_variance_x_time", "a", "c"): "tie",
      ("lowest", "log_variance_x_time", "b", "c"): "tie"}
  assert "| lowest | log_variance_x_time | init | a | c | 3 |" in out["md"]
  assert "| c ahead |" in out["md"] and "| tie |" in out["md"]
  assert "| c | 201 | init | -10.00 [" in out["md"]
  assert (tmp_path / "v.png").stat().st_size > 0


def test_scale_benchmark_tables():
  """scripts/scale_benchmark.py's tables from given timings (its runs take
  minutes; the figures are in docs/results/scale_out.md)."""
  out = run_with_script("scale_benchmark", """
      out['md'] = m.report(
          {'bare, one after another': 80.0, 'sweep, 1 core': 100.0,
           'sweep, 2 cores': 50.0}, {'1': 0.002, '4': 0.005}, 1000, 15)
  """)
  md = out["md"]
  # 4 trials x 1000 steps = 4000 trial-steps.
  assert "| bare, one after another | 80.0 | 50 | 1.00x |" in md
  assert "| sweep, 2 cores | 50.0 | 80 | 1.60x |" in md
  assert "Engine overhead per trial (sweep on 1 core minus bare, per " \
      "trial): 5.0 s." in md
  assert "| 4 | 5.00 | 2.50x |" in md


def test_snr_vs_k_command_and_its_snr(tmp_path):
  """scripts/snr_vs_k.py, small: its files, and the SNR it computes.

  The slopes at full size are in docs/results/snr_vs_k.md; here the sizes are
  too small for them, so the test checks the tables and the SNR arithmetic:
  with a known mean the SNR is |mean| / std; without one, the draws' own
  noise is taken out of their mean (pure noise: half the raw ~0.8/sqrt(n)).
  """
  proc = subprocess.run(
      [sys.executable, "scripts/snr_vs_k.py", f"--output_dir={tmp_path}",
       "--dim=3", "--ks=2,4", "--num_draws=64", "--reference_draws=128",
       "--num_data=3", "--coordinates=bias",
       "--estimators=iwae_pathwise,dreg,ovis_mc,ovis_gamma1"],
      capture_output=True, text=True, cwd=ROOT, check=False, timeout=600,
      env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  saved = json.loads((tmp_path / "snr_vs_k.json").read_text())
  assert list(saved["results"]) == ["iwae_pathwise", "dreg", "ovis_mc",
                                    "ovis_gamma1"]
  for r in saved["results"].values():
    assert len(r["snr"]) == 2 and all(np.isfinite(r["snr"]))
    assert np.isfinite(r["snr_slope"])
  assert saved["meta"]["num_params"] == 3  # b's D coordinates
  assert saved["meta"]["num_data"] == 3
  md = (tmp_path / "snr_vs_k.md").read_text()
  assert "| dreg* |" in md and "| ovis_gamma1 |" in md
  assert "mean over 3 data point(s)" in md and "coordinates (b)" in md
  assert (tmp_path / "snr_vs_k.png").stat().st_size > 0
  out = run_with_script("snr_vs_k", """
      import numpy as np
      rng = np.random.default_rng(0)
      draws = rng.normal([0.5, -2.0], [1.0, 4.0], size=(4000, 2))
      out['known'] = m.snr_and_variance(draws, np.array([0.5, -2.0]))
      out['own'] = m.snr_and_variance(draws)
      noise = rng.normal(size=(400, 50))
      out['noise'] = m.snr_and_variance(noise)
      out['raw'] = float(np.mean(np.abs(noise.mean(0)) / noise.std(0)))
      out['slope'] = m.fitted_slope([1, 10, 100], [3.0, 3.0 / 10**0.5, 0.3])
      import jax
      model, variables, x = m.problem(3, 0.01, 0, num_data=4)
      key = jax.random.key(5)
      draws = {c: m.encoder_gradient_draws(model, variables, x, 'dreg', 3, 6,
                                           0, key, c) for c in ('all', 'bias')}
      out['x_shape'] = x.shape
      out['all'] = draws['all'].tolist()
      out['bias'] = draws['bias'].tolist()
      one = m.encoder_gradient_draws(model, variables, x[:1], 'dreg', 3, 6, 0,
                                     key, 'bias')
      out['one_differs'] = bool(abs(one - draws['bias']).max() > 1e-6)
  """)
  np.testing.assert_allclose(out["known"][0], 0.5, rtol=0.03)
  np.testing.assert_allclose(out["known"][1], (1 + 16) / 2, rtol=0.05)
  np.testing.assert_allclose(out["own"][0], 0.5, rtol=0.1)
  assert out["noise"][0] < 0.6 * out["raw"]  # raw: ~sqrt(2 / pi) / sqrt(n)
  np.testing.assert_allclose(out["slope"], -0.5, rtol=1e-6)
  # The same draws: b's gradient is the first D coordinates of (b, A)'s, and
  # each draw is the gradient of the mean over the data points.
  assert out["x_shape"] == [4, 3]
  all_, bias = np.asarray(out["all"]), np.asarray(out["bias"])
  assert all_.shape == (6, 12) and bias.shape == (6, 3)
  np.testing.assert_allclose(all_[:, :3], bias, rtol=1e-6)
  assert out["one_differs"]


def test_gmm_aggregate_over_seeds_has_the_known_answer(tmp_path):
  """scripts/gmm.py --aggregate on synthetic gmm.json files of 3 seeds: the
  mean and t interval of each cell, and the paired verdicts: "a" below "b"
  by 0.1 at every seed (a ahead), "c" around "a" with differences of both
  signs (a tie), pairs only within a K."""
  offsets = {"a": [0.0, 0.0, 0.0], "b": [0.1, 0.1, 0.1],
             "c": [0.05, -0.04, 0.01]}
  dirs = []
  for seed in range(3):
    records = [{"estimator": name, "k": k, "seed": seed,
                "posterior_error": 0.5 + 0.02 * seed + offsets[name][seed],
                "prior_error": 0.1}
               for name in ("a", "b", "c") for k in (2, 10)]
    d = tmp_path / f"s{seed}"
    d.mkdir()
    (d / "gmm.json").write_text(json.dumps(records))
    dirs.append(str(d))
  out = tmp_path / "agg"
  proc = subprocess.run(
      [sys.executable, "scripts/gmm.py", "--aggregate=" + ",".join(dirs),
       f"--output_dir={out}"], capture_output=True, text=True, cwd=ROOT,
      check=False, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  agg = json.loads((out / "gmm_seeds.json").read_text())
  assert agg["seeds"] == [0, 1, 2]
  cell = next(c for c in agg["cells"] if c["estimator"] == "b"
              and c["k"] == 2 and c["metric"] == "posterior_error")
  np.testing.assert_allclose(cell["mean"], 0.62)
  np.testing.assert_allclose(cell["half"], 4.303 * 0.02 / np.sqrt(3),
                             rtol=1e-3)  # t(0.975, 2) x sd / sqrt(3)
  posterior = {(p["a"], p["b"], p["k"]): p for p in agg["pairs"]
               if p["metric"] == "posterior_error"}
  assert len(posterior) == 6  # 3 pairs at each of the 2 Ks
  assert posterior[("a", "b", 10)]["verdict"] == "a, 10 ahead"
  np.testing.assert_allclose(posterior[("a", "b", 10)]["difference"], -0.1)
  assert posterior[("a", "c", 2)]["verdict"] == "tie"
  md = (out / "gmm_seeds.md").read_text()
  assert "| posterior_error | 10 | a | b | 3 | -0.1000 |" in md
  assert "| a ahead |" in md and "| tie |" in md
  assert "0.62 [" in md


def test_gmm_command_writes_its_tables(tmp_path):
  """The README's scripts/gmm.py command with 40 steps, OVIS-MC, two Ks: every
  (estimator, K) trained, its errors finite and tabulated, the plot drawn.
  The figures at full size are in docs/results/gmm.md."""
  proc = subprocess.run(
      [sys.executable, "scripts/gmm.py", f"--output_dir={tmp_path}",
       "--estimators=ovis_mc", "--ks=2,3", "--num_steps=40",
       "--eval_every=20", "--num_eval=50", "--aux_samples=2"],
      capture_output=True, text=True, cwd=ROOT, check=False, timeout=600,
      env=FAST_COMPILE)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads((tmp_path / "gmm.json").read_text())
  assert [(r["estimator"], r["k"], r["seed"]) for r in rows] == [
      ("ovis_mc", 2, 0), ("ovis_mc", 3, 0)]
  for r in rows:
    assert [c["step"] for c in r["curve"]] == [20, 40]
    assert 0 <= r["prior_error"] < 1.5 and 0 <= r["posterior_error"] < 1.5
    assert 0 < r["ess"] <= 1 and np.isfinite(r["grad_log_variance"])
  md = (tmp_path / "gmm.md").read_text()
  assert "posterior_error:" in md and "| ovis_mc |" in md
  assert (tmp_path / "gmm.png").stat().st_size > 0
