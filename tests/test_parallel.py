"""Data parallelism (rebar_jax/parallel.py) on 4 fake CPU devices.

JAX fixes its device count when it starts, so the checks run in a
subprocess started with --xla_force_host_platform_device_count=4; it prints
its measurements as JSON and the assertions are here.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import user_shell

CHECKS = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_disable_most_optimizations", True)
    from configs import catvae_mnist, sbn_linear
    from rebar_jax import errors, gradients, parallel, train
    out = {"devices": len(jax.devices())}

    # One step's gradients, batch sharded over 4 devices vs one device.
    for name, get, estimator in [("sbn_rebar", sbn_linear, "rebar"),
                                 ("sbn_disarm", sbn_linear, "disarm"),
                                 ("catvae_loo", catvae_mnist,
                                  "reinforce_loo")]:
      c = get.get_config()
      c.estimator = estimator
      exp = train.build(c)
      state = train.init_state(exp, 0)
      x = jnp.asarray(exp.dataset.train[:24])
      grads = {}
      for n in (1, 4):
        mesh = parallel.data_mesh(n)
        step = jax.jit(lambda p, e, x, k, mesh=mesh: gradients.model_gradients(
            exp.model, exp.spec, p, e, parallel.shard_batch(x, mesh), k)[0])
        grads[n] = step(*parallel.replicate(
            (state.params, state.estimator, x), mesh), jax.random.key(3))
      out[name] = max(float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
                      for a, b in zip(jax.tree.leaves(grads[1]),
                                      jax.tree.leaves(grads[4])))

    # Whole runs: 1 device, 4 devices.
    finals = {}
    for n in (1, 4):
      c = sbn_linear.get_config()
      c.estimator, c.num_devices, c.progress_bar = "disarm", n, False
      c.num_steps = c.eval_every = c.checkpoint_every = 200
      c.steps_per_call, c.eval_max_examples, c.diagnostic_draws = 50, 500, 0
      finals[n] = train.train_and_evaluate(c, f"{sys.argv[1]}/devices{n}")
    out["finals"] = finals

    # What cannot work is refused, naming the fix.
    out["errors"] = []
    for n, batch in ((5, 24), (4, 10)):
      c = sbn_linear.get_config()
      c.num_devices, c.batch_size = n, batch
      try:
        train.train_and_evaluate(c, f"{sys.argv[1]}/refused")
      except errors.ConfigError as e:
        out["errors"].append(str(e))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("parallel")
  done = subprocess.run(
      [sys.executable, "-c", CHECKS, str(workdir)], cwd=user_shell.ROOT,
      env=user_shell.environment(
          XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  out["workdir"] = workdir
  return out


def test_sharded_gradients_equal_one_devices_to_rounding(measured):
  assert measured["devices"] == 4
  for name in ("sbn_rebar", "sbn_disarm", "catvae_loo"):
    # float32 rounding of differently ordered sums; a sample drawn differently
    # would move a gradient by O(1) of its largest entry.
    assert measured[name] < 1e-4, (name, measured[name])


def test_a_run_on_four_devices_matches_one_device(measured):
  one, four = measured["finals"]["1"], measured["finals"]["4"]
  assert one["step"] == four["step"] == 200
  # One configuration: the device count is not part of a run's identity.
  assert one["config_sha256"] == four["config_sha256"]
  for key in ("valid_elbo", "test_elbo", "train_elbo_last_1000_steps"):
    assert abs(one[key] - four[key]) < 0.05, (key, one[key], four[key])
  assert (measured["workdir"] / "devices4" / "checkpoints" / "200").is_dir()


def test_impossible_device_counts_are_refused(measured):
  too_many, uneven = measured["errors"]
  assert "config.num_devices=5 but JAX sees 4 device(s)" in too_many
  assert "batch_size=10 must be a multiple of the 4 devices" in uneven
  assert not os.path.exists(measured["workdir"] / "refused")


def test_two_processes_on_localhost_match_one_process(measured, tmp_path):
  """The same run as `measured`'s 4-device one, as 2 processes with 2 fake
  devices each (jax.distributed on localhost, gloo collectives), each started
  as a user types it."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  command = ("python -m rebar_jax.train --config=configs/sbn_linear.py "
             "--workdir=run --config.estimator=disarm --config.num_devices=0 "
             "--config.num_steps=200 --config.eval_every=200 "
             "--config.checkpoint_every=200 --config.steps_per_call=50 "
             "--config.eval_max_examples=500 --config.diagnostic_draws=0 "
             "--config.progress_bar=false "
             f"--coordinator_address=127.0.0.1:{port} --num_processes=2")
  clone = user_shell.user_dir(tmp_path)
  env = dict(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [user_shell.start(f"{command} --process_id={i}", clone, **env)
           for i in range(2)]
  outs = [user_shell.finish(p) for p in procs]
  for code, out, err in outs:
    assert code == 0, (out[-2000:], err[-3000:])
  assert "on cpu (4 devices)" in outs[0][1]
  run = clone / "run"
  final = json.loads((run / "final_metrics.json").read_text())
  other = json.loads(
      (run / "processes" / "1" / "final_metrics.json").read_text())
  single = measured["finals"]["4"]
  for key in ("valid_elbo", "test_elbo", "train_elbo_last_1000_steps"):
    assert final[key] == other[key]
    assert abs(final[key] - single[key]) < 1e-3, (key, final[key],
                                                  single[key])
  assert final["config_sha256"] == single["config_sha256"]
  assert (run / "checkpoints" / "200" / "rebar_jax_digest.json").is_file()
