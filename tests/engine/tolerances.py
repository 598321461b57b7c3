"""The tolerances of the engine tests, one per kind of comparison, each with the arithmetic behind it.

A float sum rounded in another order (chunks, blocks, a streamed store, another BLAS kernel for another matrix
shape) moves by a few units in the last place (ulps) of the magnitude of its terms, not of its result: a score
that cancels to near zero carries the rounding of its large terms. So a comparison of two float32 computations
needs an absolute tolerance scaled by the magnitude of what is summed (``atol_reorder``), never a fixed ``1e-6``
that holds on one machine's kernels and fails on another's. Where a quantity is a sum of non-negative terms
(self-influence, norms) no cancellation is possible and a relative tolerance per value suffices.

The problems here are small: a score sums over at most ~62,000 parameters (the tutorial's ``Net``, TracInCP on all
layers) x 3 checkpoints. BLAS and torch's reductions sum in blocks (pairwise), whose rounding grows like
log2(n) * eps, not n * eps: log2(2e5) = 18 ulps per sum.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2.2e-16
EPS_BF16 = torch.finfo(torch.bfloat16).eps  # 7.8e-3

# The float32 engine against the float64 oracle, relative to the largest reference score (``assert_scores_close``
# uses it as rtol and as atol / max|reference|). A score chains ~4 roundings (the loss gradient, two dot products of
# up to ~2e5 blocked terms, the sum over checkpoints): 4 x 18 ulps x 1.19e-7 = 8.6e-6; 1e-4 leaves ~10x.
RTOL_ORACLE = 1e-4

# Two float32 computations of the same sums in another order: ulps of the magnitude of the summed terms. The terms
# of a score are at most a few times the largest score (a product of two dot products and a learning rate <= 2);
# 64 ulps = 2 orders x 18 ulps, with room for that factor.
REORDER_ULPS = 64
RTOL_REORDER = 1e-5  # per value, for the values far from zero (84 ulps)

# A sum of non-negative terms (self-influence: per checkpoint lr * |g|^2 |a|^2; norms) in another order: no
# cancellation, so relative to each value: 3 checkpoints x 2 products x ~1 ulp, 8 ulps ~ 1e-6.
RTOL_POSITIVE = 1e-6

# TracInCP's per-example gradients against Captum's (float32 both, different kernels: unfold/einsum against autograd
# per sample): a conv weight's gradient sums one term per output position (784 for conv1 of the Net) in another
# order, and Captum's reduction differs too: relative 1e-4, absolute ulps of the largest gradient entry.
RTOL_CAPTUM_GRADS = 1e-4

# Factors kept in bfloat16/float16 multiplied natively against converted to float32 first: both round each factor
# once (eps_bf16 / 2 each, eps_bf16 for the product of two), accumulations in float32; relative to the largest score,
# 2e-2 ~ 2.5 eps_bf16 covers the sum of the two factors' rounding and its reordering.
ATOL_HALF_OF_MAX = 2e-2

# The float64 oracle's own identities (exact in real arithmetic): a few ulps of float64 per chained operation.
RTOL_FLOAT64 = 1e-10


def atol_reorder(reference, ulps: int = REORDER_ULPS) -> float:
    """Absolute tolerance of a float32 result summed in another order: ``ulps`` float32 ulps of ``max|reference|``."""
    ref = torch.as_tensor(reference).detach()
    return ulps * EPS32 * (float(ref.abs().max()) if ref.numel() else 0.0)
