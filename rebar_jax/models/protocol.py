r"""What the training code needs of a discrete-latent model.

A model with L stochastic layers b = (b_1, ..., b_L), recognition model

    q(b | x) = prod_l q(b_l | x, b_<l),   q(b_l | .) = Family_l(logits_l(x, b_<l)),

and generative model p(x, b) is a Flax linen module with

    stochastic_layers() -> tuple[StochasticLayer, ...]   (no parameters needed)
    layer_logits(l, x, above) -> (..., *event_shape_l)   logits of q(b_l | x, b_<l)
    log_joint(x, bs) -> (log p(x, b), log q(b | x))      each of shape (...)

and the fields `data_dim` (D) and `train_mean` (the mean training pixel (D,)
or None). x is (..., D); bs and `above` are tuples of arrays
(..., *event_shape_l), one per layer, top (closest to x) first; `above` holds
b_1..b_{l-1}. A layer's family names the distribution (`"bernoulli"`: units in
{0, 1}; `"categorical"`: one-hot over the last axis) and with it the
estimators that apply. `log_joint` must accept relaxed samples (points of
[0, 1] or of the simplex) for the relaxed estimators.
"""
from typing import NamedTuple


class StochasticLayer(NamedTuple):
  """One stochastic layer: its distribution family and the shape of b_l."""
  family: str
  event_shape: tuple[int, ...]
