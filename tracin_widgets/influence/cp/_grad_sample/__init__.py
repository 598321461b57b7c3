"""TracInCP's per-example gradients, one module per way of getting them (as Opacus's ``grad_sample``):
``_blocks`` (the block types and their algebra), ``_plan`` (which layers are hooked, and their blocks from one
forward and one backward), ``_conv2d`` (a Conv2d's), ``_tokens`` (Linear over tokens, Embedding, EmbeddingBag),
``_norm`` (normalisation layers' affine parameters), ``_vmap`` (``vmap(grad)`` and the loop fallback)."""

from ._blocks import (
    Block,
    DenseBlock,
    FactoredBlock,
    TokenBlock,
    Workspace,
    blocks_cat,
    blocks_dot,
    blocks_nonfinite_rows,
    blocks_sq,
    blocks_sum,
    sum_terms,
)
from ._conv2d import conv2d_sample_grads, hookable_conv2d
from ._plan import HookedLayer, Plan, hooked_blocks, make_plan, named_grads, select_params
from ._vmap import dense_grads, dense_grads_loop

__all__ = [
    "Block",
    "DenseBlock",
    "FactoredBlock",
    "HookedLayer",
    "Plan",
    "TokenBlock",
    "Workspace",
    "blocks_cat",
    "blocks_dot",
    "blocks_nonfinite_rows",
    "blocks_sq",
    "blocks_sum",
    "conv2d_sample_grads",
    "dense_grads",
    "dense_grads_loop",
    "hookable_conv2d",
    "hooked_blocks",
    "make_plan",
    "named_grads",
    "select_params",
    "sum_terms",
]
