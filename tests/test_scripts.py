"""The scripts' pure helpers (tables, fits, the peer call), timing-free.

Each script defines its own absl flags, so each is imported in a fresh Python
process rather than in the test process.
"""
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                        text=True, cwd=ROOT, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_benchmark_fit_table_and_missing_peer(tmp_path):
  out = run_with_script("benchmark", f"""
      import numpy as np
      xs = np.array([24., 64., 256., 1024.])
      out['slope'] = m.slope(xs, 3.0 * xs ** 0.5)
      out['peer'] = m.peer_steps_per_sec('/bin/false', 'rebar', 24,
                                         {str(tmp_path / 'x.npy')!r}, 10, 1)
      step = dict(model='linear', batch=24, num_latents=200, num_samples=1,
                  steps_per_sec=100.0, compile_s=1.0, flops_per_step=1e6,
                  temp_bytes=2**20, roofline_fraction=0.5, spread=0.0)
      result = dict(
          machine='test', matmul_flops_per_sec=2e8,
          step_shape_matmul_flops_per_sec={{24: 1e8}},
          estimators_alone=[],
          train_step=[dict(step, estimator='reinforce'),
                      dict(step, estimator='rebar', steps_per_sec=40.0)],
          peer_storchastic=[
              dict(estimator='rebar', batch=24, ours_steps_per_sec=40.0,
                   peer_steps_per_sec=20.0, ratio=2.0),
              dict(estimator='muprop', batch=24, ours_steps_per_sec=50.0,
                   peer_error='no Storchastic equivalent')],
          scaling={{}})
      out['md'] = m.markdown(result, 5)
  """)
  assert abs(out["slope"] - 0.5) < 1e-9
  assert "error" in out["peer"] and "exit" in out["peer"]["error"]
  md = out["md"]
  assert "| rebar | 40.0 | 20.0 | 2.0x |" in md
  assert "| muprop | 50.0 | - (no Storchastic equivalent) | - |" in md
  # REBAR at 40 steps/s costs 2.5 REINFORCE steps; roofline 50%, and 100% of
  # the 1e8 FLOP/s shape bound (0.5 * 2e8).
  assert "| linear | 24 | rebar | 40.0 | 2.50 | 1.0 | 50.0 | 100.0 | 1.0 |" in md


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
  """)
  # Train ELBO rises by 1 per 100 steps: the best 1000-step window is the last
  # 10 rows (steps 2100..3000, ELBO -179..-170), mean -174.5.
  assert abs(out["best"] - (-200.0 + 25.5)) < 1e-9
  md = "\n".join(out["md"])
  assert "| mnist_linear1 | rebar | -149.00 | -148.00 | -147.00 | -111.6 |" in md
  assert "| mnist_linear1 | disarm | -154.00 | -153.00 | -152.00 |  |" in md
  assert (tmp_path / "curves.png").stat().st_size > 0


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
                            ['test_elbo', 'valid_elbo:max', 'valid_elbo:last'])
      out['md'] = m.markdown(table, ['estimator', 'runs', 'test_elbo',
                                     'valid_elbo:max', 'valid_elbo:last'])
      m.plot_curves(runs, ['estimator'], 'train_elbo',
                    {str(tmp_path / 'curves.png')!r})
  """)
  # rebar: test_elbo mean of -100 and -102; valid max = mean(-10, -9).
  assert "| rebar | 2 | -101.00 | -9.50 | -29.50 |" in out["md"]
  assert "| disarm | 1 | - | -10.00 | -30.00 |" in out["md"]
  assert (tmp_path / "curves.png").stat().st_size > 0
