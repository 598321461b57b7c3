"""Independent, naive float64 TracIn oracle (no Captum, no engine code).

For every checkpoint the model is deep-copied to float64, the checkpoint is loaded into the copy, and the per-example
gradient of the per-example loss is computed with plain ``torch.autograd.grad``, one example at a time (a Python loop:
slow but obviously right).  Scores are ``sum_c lr_c <grad_test, grad_train>``.

Two gradient modes:

* ``layers`` (TracInCP): gradient w.r.t. every parameter (weight AND bias) of the named modules, or of the whole model
  when ``layers is None``.
* ``final_fc_layer`` (TracInCPFast / RandProj, Captum's hook semantics): a forward hook captures ``input[0]`` of the
  given module; the gradient is ``(d loss / d MODEL OUTPUT) outer input[0]`` flattened per example, i.e. the weight
  gradient of a final linear layer without its bias.  When the hooked module is not the layer producing the model
  output (e.g. the tutorial's ``relu4``), this deliberately reproduces Captum's (non-gradient) quantity.

Loss semantics (engine-anchors.md section 1.6), per example ``i``:

* ``loss_fn is None``: the summed model output of example ``i`` (TracInCP only).
* otherwise ``loss_fn(out_i[None], y_i[None])`` summed to a scalar, i.e. the loss of a batch of ONE example.
  - ``reduction="none"``: the per-example loss (summed over extra dims, as Captum's ``grad_outputs=ones``).
  - ``reduction="sum"``: the per-example loss.
  - ``reduction="mean"``: Captum multiplies the batch-mean gradient back by the batch size N only; that equals the
    loss of a batch of one example.  For a loss whose mean divides by N*D (MSE on D outputs) this gives 1/D of the
    "sum" gradient, hence the 1/D^2 score quirk, which the oracle reproduces by construction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .tolerances import RTOL_ORACLE

__all__ = [
    "TracInOracle",
    "default_load",
    "module_name",
    "assert_scores_close",
    "assert_topk_consistent",
]


def default_load(model: nn.Module, path: str) -> float:
    """Plain state dict, or ``{"model_state_dict": ...}`` / ``{"state_dict": ...}``; learning rate 1."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "model_state_dict" in ckpt:
        ckpt = ckpt["model_state_dict"]
    elif isinstance(ckpt, dict) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    model.load_state_dict(ckpt)
    return 1.0


def module_name(model: nn.Module, module) -> str:
    """Name of ``module`` inside ``model`` (``module`` may already be a name)."""
    if isinstance(module, str):
        return module
    for name, mod in model.named_modules():
        if mod is module:
            return name
    raise LookupError(f"{module!r} is not a submodule of the model")


def _to64(t):
    if isinstance(t, Tensor) and t.is_floating_point():
        return t.detach().to(torch.float64)
    return t


class TracInOracle:
    """Naive float64 reference.

    Args:
        model: the user's model (never modified: it is deep-copied).
        checkpoints: list of checkpoint paths (order irrelevant for scores).
        checkpoints_load_func: ``f(model, path) -> lr``; ``None`` = :func:`default_load`.
        layers: TracInCP mode, module names (``None`` = all parameters).
        final_fc_layer: Fast mode, a module of ``model`` or its dotted name.
        loss_fn: training-side loss (``None`` = summed outputs, TracInCP only).
        test_loss_fn: test-side loss (defaults to ``loss_fn``).
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoints: Sequence[str],
        checkpoints_load_func: Callable | None = None,
        *,
        layers: Sequence[str] | None = None,
        final_fc_layer=None,
        loss_fn=None,
        test_loss_fn=None,
    ):
        if final_fc_layer is not None and layers is not None:
            raise ValueError("choose layers (TracInCP) or final_fc_layer (Fast), not both")
        if final_fc_layer is not None and loss_fn is None:
            raise ValueError("Fast mode needs a loss_fn")
        self.model = copy.deepcopy(model).to(torch.float64).eval()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.checkpoints = list(checkpoints)
        self.load = checkpoints_load_func or default_load
        self.layers = None if layers is None else list(layers)
        self.fast_name = None if final_fc_layer is None else module_name(model, final_fc_layer)
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn

    # -- per-example gradients ------------------------------------------------------------------------------------
    def _params(self):
        if self.layers is None:
            params = list(self.model.parameters())
        else:
            mods = dict(self.model.named_modules())
            params = [p for name in self.layers for p in mods[name].parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    def _scalar_loss(self, out: Tensor, y, loss_fn) -> Tensor:
        if loss_fn is None:
            return out.sum()
        return loss_fn(out, y).sum()

    def _example_grad(self, feats, y, loss_fn, params) -> Tensor:
        with torch.enable_grad():
            if self.fast_name is None:
                out = self.model(*feats)
                loss = self._scalar_loss(out, y, loss_fn)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                flat = [
                    (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=False)
                ]
                return torch.cat(flat)
            captured = []
            module = dict(self.model.named_modules())[self.fast_name]
            handle = module.register_forward_hook(lambda m, inp, o: captured.append(inp[0].detach()))
            try:
                out = self.model(*feats)
            finally:
                handle.remove()
            loss = self._scalar_loss(out, y, loss_fn)
            (g,) = torch.autograd.grad(loss, out)
            a = captured[0]
            return torch.outer(g.reshape(-1), a.reshape(-1)).reshape(-1)

    def gradients(self, batch: Sequence[Tensor], test: bool = False):
        """List over checkpoints of ``(lr, G)`` with ``G`` of shape ``(n, P)`` (float64)."""
        batch = [_to64(t) for t in batch]
        feats_all, labels = batch[:-1], batch[-1]
        n = labels.shape[0]
        loss_fn = self.test_loss_fn if test else self.loss_fn
        result = []
        for path in self.checkpoints:
            lr = float(self.load(self.model, path))
            self.model.to(torch.float64).eval()
            params = self._params() if self.fast_name is None else None
            rows = []
            for i in range(n):
                feats = [f[i : i + 1] for f in feats_all]
                rows.append(self._example_grad(feats, labels[i : i + 1], loss_fn, params))
            result.append((lr, torch.stack(rows)))
        return result

    # -- scores ---------------------------------------------------------------------------------------------------
    def influence(self, test_batch, train_batch, aggregate: bool = False) -> Tensor:
        g_test = self.gradients(test_batch, test=True)
        g_train = self.gradients(train_batch, test=False)
        scores = 0
        for (lr, gt), (lr2, gr) in zip(g_test, g_train, strict=False):
            assert lr == lr2
            if aggregate:
                gt = gt.sum(0, keepdim=True)
            scores = scores + lr * gt @ gr.T
        return scores

    def self_influence(self, batch) -> Tensor:
        return sum(lr * (g * g).sum(1) for lr, g in self.gradients(batch, test=False))


# ---------------------------------------------------------------------------------------------------------------------
# comparison helpers (used by the tests)
# ---------------------------------------------------------------------------------------------------------------------
def assert_scores_close(actual: Tensor, expected: Tensor, rtol: float = RTOL_ORACLE, what: str = "scores") -> None:
    """Elementwise ``|a - e| <= rtol*|e| + rtol*max|e|`` (atol relative to the score magnitude)."""
    actual = torch.as_tensor(actual).detach().to(torch.float64).cpu()
    expected = torch.as_tensor(expected).detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    assert scale > 0 or expected.numel() == 0, f"{what}: degenerate all-zero reference"
    atol = rtol * scale
    err = (actual - expected).abs()
    bad = err > rtol * expected.abs() + atol
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} entries differ; max abs err {float(err.max()):.3e} "
            f"(score scale {scale:.3e}); first at {idx}: actual {float(actual[idx]):.6g} "
            f"vs expected {float(expected[idx]):.6g}"
        )


def assert_topk_consistent(
    result, expected_scores: Tensor, k: int, proponents: bool, rtol: float = RTOL_ORACLE
) -> None:
    """Check a k-mode result against a full reference score matrix.

    * a NamedTuple with fields ``indices`` (int64) and ``influence_scores``, both ``(n_test, min(k, n_train))``;
    * scores sorted descending (proponents) / ascending (opponents);
    * returned scores equal the reference's top-k values, and the reference score AT each returned index too;
    * index sets equal the reference's top-k wherever the k-th and (k+1)-th reference values are not tied.
    """
    assert hasattr(result, "_fields") and tuple(result._fields) == ("indices", "influence_scores"), type(result)
    indices, scores = result.indices, result.influence_scores
    assert indices.dtype == torch.int64, indices.dtype
    expected_scores = expected_scores.detach().to(torch.float64)
    n_test, n_train = expected_scores.shape
    kk = min(k, n_train)
    assert tuple(indices.shape) == (n_test, kk), (tuple(indices.shape), (n_test, kk))
    assert tuple(scores.shape) == (n_test, kk), (tuple(scores.shape), (n_test, kk))
    scores64 = scores.detach().to(torch.float64)
    diffs = scores64[:, 1:] - scores64[:, :-1]
    scale = float(expected_scores.abs().max())
    tol = rtol * scale
    if proponents:
        assert (diffs <= tol).all(), f"proponent scores not descending: {scores}"
    else:
        assert (diffs >= -tol).all(), f"opponent scores not ascending: {scores}"
    ref_sorted, ref_idx = torch.sort(expected_scores, dim=1, descending=proponents)
    assert_scores_close(scores64, ref_sorted[:, :kk], rtol, what="top-k influence_scores")
    assert_scores_close(
        torch.gather(expected_scores, 1, indices.cpu()),
        ref_sorted[:, :kk],
        rtol,
        what="reference score at top-k indices",
    )
    for i in range(n_test):
        assert len(set(indices[i].tolist())) == kk, f"duplicate indices in row {i}: {indices[i]}"
        untied = kk == n_train or abs(float(ref_sorted[i, kk - 1] - ref_sorted[i, kk])) > 10 * tol
        if untied:
            assert set(indices[i].tolist()) == set(ref_idx[i, :kk].tolist()), (
                f"row {i}: top-{kk} indices {sorted(indices[i].tolist())} != reference "
                f"{sorted(ref_idx[i, :kk].tolist())}"
            )
