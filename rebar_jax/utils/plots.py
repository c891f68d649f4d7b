"""Training curves as a PNG."""
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_curves(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Training ELBO and every evaluated bound against the step."""
  fig, ax = plt.subplots(figsize=(8, 5))
  keys = ["train_elbo"] + sorted(
      {k for r in rows for k in r
       if k.startswith(("valid_", "test_")) and k != "train_elbo"})
  for key in keys:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    if pts:
      steps, values = zip(*pts)
      ax.plot(steps, values, marker="o" if len(pts) < 30 else None,
              ms=3, lw=1, label=key)
  ax.set(xlabel="step", ylabel="nats (higher is better)",
         title="Training curves")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
