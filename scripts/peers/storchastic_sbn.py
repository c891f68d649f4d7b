r"""Steps per second of Storchastic's linear SBN train step (the peer, PyTorch).

Runs in its own environment (PyTorch and Storchastic are not dependencies of
rebar_jax); `make peers` creates it:

  .venv-peers/bin/python scripts/peers/storchastic_sbn.py --estimator=rebar \
      --batch=24 --data=x.npy

`scripts/benchmark.py --peer_python=.venv-peers/bin/python` runs it with
`--serve` once per estimator and times it in alternation with its own step:
it prints {"ready": ...} and then answers each line n on stdin with the
seconds n steps took, as one JSON line.

The model is the one rebar_jax benchmarks: a linear one-layer SBN 784-200 with
a learned factorised prior, q(b|x) = Bernoulli(sigma(W_e x + c)),
p(x|b) = Bernoulli(sigma(W_d b + a)), and the single-sample learning signal
f(b) = log p(b) + log p(x|b) - log q(b|x) summed over a batch of `--batch`
rows drawn from `--data`. One step = Storchastic's forward, `storch.backward()`
(which also trains REBAR/RELAX's control-variate parameters on the variance
loss) and an Adam update. Prints one JSON line: steps/s (median over
`--repeats` timed blocks of `--steps` steps, after a warm-up block) and the
spread.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import storch
from storch import method as sm
import torch
from torch import nn
from torch.distributions import Bernoulli

torch.distributions.Distribution.set_default_validate_args(False)

# rebar_jax name -> how Storchastic spells the nearest estimator.
METHODS = {
    "reinforce": lambda: sm.ScoreFunction("z"),
    "reinforce_loo": lambda: sm.ScoreFunction(
        "z", n_samples=2, baseline_factory="batch_average"),
    "arm": lambda: sm.ARM("z"),
    "disarm": lambda: sm.DisARM("z"),
    "rebar": lambda: sm.REBAR("z"),
    "relax": lambda: sm.RELAX("z", in_dim=(200,)),
    "concrete": lambda: sm.GumbelSoftmax("z"),
    "straight_through_gumbel": lambda: sm.GumbelSoftmax(
        "z", straight_through=True),
}


class LinearSBN(nn.Module):
  """784-200 linear SBN with a learned prior, and its storch estimator."""

  def __init__(self, estimator: str, num_latents: int = 200):
    super().__init__()
    self.encoder = nn.Linear(784, num_latents)
    self.decoder = nn.Linear(num_latents, 784)
    self.prior = nn.Parameter(torch.zeros(num_latents))
    self.method = METHODS[estimator]()

  def step_cost(self, x: torch.Tensor) -> storch.Tensor:
    x = storch.denote_independent(x, 0, "data")
    logits = storch.deterministic(self._encode)(x)
    b = self.method(Bernoulli(logits=logits))
    if b.dtype == torch.bool:
      b = b.float()
    cost = storch.deterministic(self._negative_elbo)(x, b, logits)
    storch.add_cost(cost, "negative_elbo")
    return cost

  def _encode(self, x):
    return self.encoder(x)

  def _negative_elbo(self, x, b, q_logits):
    def log_bernoulli(v, l):  # valid for relaxed v in [0, 1] too
      return (v * l - nn.functional.softplus(l)).sum(-1)
    return -(log_bernoulli(b, self.prior) +
             log_bernoulli(x, self.decoder(b)) - log_bernoulli(b, q_logits))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--estimator", required=True, choices=sorted(METHODS))
  p.add_argument("--batch", type=int, default=24)
  p.add_argument("--data", required=True, help=".npy of binary (N, 784) rows")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--serve", action="store_true",
                 help="answer lines n on stdin with the seconds of n steps")
  args = p.parse_args()

  torch.manual_seed(args.seed)
  data = torch.from_numpy(np.load(args.data).astype(np.float32))
  model = LinearSBN(args.estimator)
  opt = torch.optim.Adam(model.parameters(), lr=3e-4)
  gen = torch.Generator().manual_seed(args.seed)

  def block(n):
    for _ in range(n):
      idx = torch.randint(0, data.shape[0], (args.batch,), generator=gen)
      storch.reset()
      opt.zero_grad()
      model.step_cost(data[idx])
      storch.backward()
      opt.step()

  try:
    block(max(10, args.steps // 5))  # warm-up
    if args.serve:
      print(json.dumps({"ready": True, "torch": torch.__version__,
                        "threads": torch.get_num_threads()}), flush=True)
      for line in sys.stdin:
        if line.strip():
          t = time.perf_counter()
          block(int(line))
          print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
      return
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      block(args.steps)
      times.append(time.perf_counter() - t)
  except Exception as e:  # pylint: disable=broad-except
    print(json.dumps({"estimator": args.estimator, "error":
                      f"{type(e).__name__}: {e}"[:300]}))
    return
  med = statistics.median(times)
  print(json.dumps({
      "estimator": args.estimator, "batch": args.batch,
      "steps_per_sec": args.steps / med,
      "spread": (max(times) - min(times)) / med,
      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
