"""TracInCP: TracIn over any set of layers.

Per-example gradients are never computed in a Python loop over examples:
* an ``nn.Linear`` that runs once per forward pass on a 2-D input is factorised like the last layer,
  grad = g a^T (+ g for its bias), so dot products are (g.g')(a.a' + 1) without materialising grads;
* every other selected parameter gets batched per-example gradients from ``torch.func.vmap(grad(...))``.
One pass over the training data (checkpoints loaded once, batches outer, checkpoints inner) gives the
scores for a test batch and the self-influence of every training example; both are cached. Nothing kept
grows with n_test * n_train unless the whole score matrix is asked for (``k=None``): with ``k`` the pass keeps
a running top-k of the proponents and the opponents.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ._base import (
    Checkpoints,
    Inputs,
    KMostInfluentialResults,
    ProgressCallback,
    TracInCPBase,
    _Progress,
    check_k,
    check_proponents,
    check_train_indices,
    locked,
    sqrt_lr,
)
from ._cache import hash_tensors
from ._data import batch_len, input_batches, rows_getter, split_rows
from ._layers import resolve_module
from ._loss import loss_mode, total_loss
from ._store import human
from ._topk import FullScores, RunningTopK, ScoreSink, TopKPair, topk_of


class FactoredBlock(NamedTuple):
    """A factorised ``nn.Linear``'s per-example gradients, never materialised: the weight gradient of row i is
    ``g[i] a[i]^T`` (plus ``g[i]`` for the bias when ``has_bias``)."""

    g: torch.Tensor  # (n, out): the loss gradient w.r.t. the layer's output
    a: torch.Tensor  # (n, in): the layer's input
    has_bias: bool  # the layer's bias is selected too

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.g, self.a)


class DenseBlock(NamedTuple):
    """Materialised per-example gradients ``(n, numel)`` of some selected parameters, concatenated."""

    v: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.v,)


Block = FactoredBlock | DenseBlock  # one checkpoint's per-example gradients of a batch: a list of these


class HookedLayer(NamedTuple):
    """A selected layer whose per-example gradients come from a forward hook (its input and output gradient)."""

    name: str
    module: nn.Module  # an nn.Linear (factorised) or an nn.Conv2d
    has_bias: bool  # its bias is selected too


class Plan(NamedTuple):
    """How the selected parameters get their per-example gradients (made once, on the first batch)."""

    factored: list[HookedLayer]  # Linear layers run once per forward on a 2-D input: FactoredBlock
    conv: list[HookedLayer]  # Conv2d layers run once per forward: one DenseBlock from their hooks
    dense: list[str]  # every other selected parameter (by name): one DenseBlock from vmap(grad)


def _conv2d_sample_grads(conv: nn.Conv2d, inp: torch.Tensor, gout: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """Per-example gradients of a Conv2d's weight (and bias) from its input and output gradient.

    The input windows are a strided *view* (no im2col copy) contracted with the output gradient by einsum.
    """
    n = inp.shape[0]
    (k0, k1), (s0, s1), (d0, d1) = conv.kernel_size, conv.stride, conv.dilation
    p0, p1 = cast(tuple[int, int], conv.padding)  # the plan hooks no Conv2d with padding="same"/"valid"
    x = torch.nn.functional.pad(inp, (p1, p1, p0, p0)) if (p0 or p1) else inp
    win = x.unfold(2, d0 * (k0 - 1) + 1, s0).unfold(3, d1 * (k1 - 1) + 1, s1)[..., ::d0, ::d1]  # a view
    ho, wo = gout.shape[2], gout.shape[3]
    if inp.device.type == "cpu":
        # one bmm per kernel offset: several times faster than one big einsum on CPUs
        c, o = x.shape[1], gout.shape[1]
        gf = gout.reshape(n, o, ho * wo)
        gw = x.new_empty(n, o, c, k0, k1)
        for i in range(k0):
            for j in range(k1):
                xs = x[:, :, i * d0 : i * d0 + s0 * (ho - 1) + 1 : s0, j * d1 : j * d1 + s1 * (wo - 1) + 1 : s1]
                gw[:, :, :, i, j] = torch.bmm(gf, xs.reshape(n, c, ho * wo).transpose(1, 2))
        gw = gw.reshape(n, -1)
    else:
        win = win[:, :, :ho, :wo]  # (n, C_in, Ho, Wo, kh, kw)
        gw = torch.einsum("ncyxhw,noyx->nochw", win, gout).reshape(n, -1)
    return torch.cat([gw, gout.sum((2, 3))], dim=1) if has_bias else gw


def _block_dot(t: Block, r: Block) -> torch.Tensor:
    """``(n_t, n_r)`` dot products of the per-example gradients of two blocks made by the same plan."""
    if isinstance(t, FactoredBlock):
        assert isinstance(r, FactoredBlock)
        aa = t.a @ r.a.T
        return (t.g @ r.g.T) * (aa + 1 if t.has_bias else aa)
    assert isinstance(r, DenseBlock)
    return t.v @ r.v.T


def _block_sq(r: Block) -> torch.Tensor:
    """``(n,)`` squared norms of a block's per-example gradients."""
    if isinstance(r, FactoredBlock):
        a2 = r.a.pow(2).sum(1)
        return r.g.pow(2).sum(1) * (a2 + 1 if r.has_bias else a2)
    return r.v.pow(2).sum(1)


def _block_cat(blocks: tuple[Block, ...]) -> Block:
    """The same block of consecutive row chunks, joined along the rows."""
    first = blocks[0]
    if isinstance(first, FactoredBlock):
        fs = [b for b in blocks if isinstance(b, FactoredBlock)]
        return FactoredBlock(torch.cat([b.g for b in fs]), torch.cat([b.a for b in fs]), first.has_bias)
    return DenseBlock(torch.cat([b.v for b in blocks if isinstance(b, DenseBlock)]))


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors, in order (``sum()`` would start from the int 0)."""
    return functools.reduce(torch.add, terms)


def _blocks_dot(tb: list[Block], rb: list[Block]) -> torch.Tensor:
    return _total(_block_dot(t, r) for t, r in zip(tb, rb, strict=True))


def _blocks_sq(rb: list[Block]) -> torch.Tensor:
    return _total(_block_sq(r) for r in rb)


def _blocks_cat(parts: list[list[Block]]) -> list[Block]:
    return [_block_cat(blocks) for blocks in zip(*parts, strict=True)]


def _entry_bytes(entry: torch.Tensor | TopKPair) -> int:
    return entry.numel() * entry.element_size() if isinstance(entry, torch.Tensor) else entry.nbytes


def _host_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class TracInCP(TracInCPBase):
    """TracIn over the parameters of ``layers`` (every trainable parameter when None), with Captum 0.9's API.

    The influence of training example ``z`` on test example ``z'`` is ``sum_c lr_c grad_c(z) . grad_c(z')`` over
    the checkpoints ``c``, with ``grad_c`` the per-example gradient of the loss w.r.t. the selected parameters.
    ``nn.Linear`` layers are factorised (their gradients are never materialised), ``Conv2d`` gradients come from
    hooks and anything else from ``torch.func.vmap``. One pass over the training data gives the scores of a test
    batch and every self-influence; both are kept for later calls (the self-influence also in ``cache_dir``).

    Memory does not grow with the training set beyond ``n_train`` floats (the self-influence): the training data
    are read batch by batch, per-example gradients are materialised only for non-Linear layers and at most
    ``max_grad_floats`` floats (512 MB) of them per chunk, and ``influence(k=...)`` keeps a running top-k (the
    proponents and the opponents, ``n_test * k`` values) instead of the ``(n_test, n_train)`` matrix that only
    ``k=None`` builds. Results kept for later calls take at most ``score_cache_bytes`` (512 MB). TracInCP takes
    no ``max_memory=`` (TracInCPFast's bound on its cached factors): it caches no per-example gradients.

    Args:
        model: the trained ``nn.Module`` (an ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper is fine: the
            module inside is computed on). It is called as ``model(*batch[:-1])`` and must return a tensor whose
            first dimension is the batch. Scores are computed in eval mode, and after every call the model is as
            it was given (weights, train/eval flags, ``requires_grad``, device).
        train_dataset: the training data: a ``Dataset`` whose items are ``(*features, label)``, or a ``DataLoader``
            of such batches that yields every row once, in order (no shuffling sampler, no ``drop_last``). Other
            forms (a tuple ``(X, Y)``, dict items) are a ``TypeError`` at construction saying how to wrap them.
        checkpoints: the checkpoint files: a list of paths (natural-sorted, as Captum), one file, or a folder
            (every regular, non-hidden file in it, whatever its extension). Each is loaded once per instance.
        checkpoints_load_func: ``f(model, path) -> lr``: loads the checkpoint at ``path`` into ``model`` and
            returns its learning rate (a finite number >= 0; checked as each loads). Default None: a state dict,
            or a dict holding one under ``"model_state_dict"`` / ``"state_dict"`` (learning rate from its
            ``"learning_rate"`` or ``"lr"`` entry, else 1.0), loaded with ``torch.load(weights_only=weights_only)``.
        layers: the layers whose parameters the gradients are taken of: a list of names such as
            ``["fc2", "fc3"]`` (or the modules themselves). Default None: every parameter with
            ``requires_grad=True``. An unknown name is a ``ValueError`` suggesting close ones.
        loss_fn: the training loss ``loss_fn(outputs, labels)``. With ``sample_wise_grads_per_batch=False``
            (the default) its ``reduction`` must be ``"none"`` (one loss per example); with True, ``"sum"`` or
            ``"mean"`` (the gradient is then multiplied back by the batch size, as Captum). Default None: the
            gradient of the summed model outputs. A loss without a ``reduction`` attribute is assumed to have
            ``"none"`` (``"sum"`` with ``sample_wise_grads_per_batch=True``), with a ``TracInWarning``.
        batch_size: rows per batch when ``train_dataset`` is a Dataset (ignored for a DataLoader). Default None
            means 512 (Captum's default is 1). Scores do not depend on it: the rows per forward pass follow
            the measured activation memory.
        test_loss_fn: the loss of the test examples in ``influence``, with the same rules (default None:
            ``loss_fn``). ``self_influence`` and ``compute_intermediate_quantities`` use ``loss_fn``.
        sample_wise_grads_per_batch: Captum's switch between a per-example loss (False, the default) and a
            batch loss (True) whose per-example gradients Captum takes with hooks. Here both give the same
            per-example gradients; it only decides which ``loss_fn.reduction`` is accepted.
        device: where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` (default None: the
            model's device). Checked against this machine at construction (a missing GPU is a ``ValueError``);
            the model is moved there for each call and back afterwards, and batches are moved for you.
        num_workers: ``DataLoader`` workers reading ``train_dataset`` (not used when it is a DataLoader). Default
            None: none on the CPU, for a ``TensorDataset`` (sliced directly) or a recognised torchvision CIFAR
            dataset (read vectorised); on a GPU up to one per spare core (at most 16), trimmed to
            ``sqrt(read time / 20 ms)`` after timing a few items. Scores do not depend on it.
        progress_callback: ``f(phase: str, done: int, total: int)``, called as each phase of a long computation
            advances (``total`` is -1 when unknown). Raising from it (e.g. ``tracin_widgets.influence.Cancelled``)
            aborts cleanly: the model is restored and nothing partial is cached. Default None.
        cache_dir: a folder where the training set's self-influence scores are saved and reused by later
            instances (default None: kept in memory only). A file is reused only when the loss (type and
            settings), the layers, the checkpoint files' contents and learning rates, ``checkpoints_load_func``,
            the model's architecture and precision, the device type, ``data_version`` and the training data are
            all the same. A folder that cannot be written gives a ``TracInWarning`` before the pass (results stay
            in memory); the checkpoints folder itself is a ``ValueError``.
        weights_only: passed to ``torch.load`` by the default ``checkpoints_load_func`` (default True: only
            tensors and plain containers are unpickled). Pass False only for checkpoint files you trust.
        data_version: any string naming the version of the training data (default None), part of the cache
            key. Array-backed datasets (``TensorDataset``, a ``Subset`` of one, torchvision's CIFAR/MNIST) are
            hashed in full; any other dataset only by its type, length and 24 items spread over it, so change
            ``data_version`` when its contents change (a dataset without a length is reused only with one).
    """

    _cache_kind = "cp"

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        checkpoints: Checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], Any] | None = None,
        layers: Sequence[str | nn.Module] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        batch_size: int | None = None,
        test_loss_fn: Callable[..., torch.Tensor] | None = None,
        sample_wise_grads_per_batch: bool = False,
        *,
        device: str | int | torch.device | None = None,
        num_workers: int | None = None,
        progress_callback: ProgressCallback | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights_only: bool = True,
        data_version: str | None = None,
    ) -> None:
        super().__init__(
            model,
            train_dataset,
            checkpoints,
            checkpoints_load_func,
            loss_fn,
            batch_size,
            test_loss_fn,
            device=device,
            num_workers=num_workers,
            progress_callback=progress_callback,
            cache_dir=cache_dir,
            weights_only=weights_only,
            data_version=data_version,
        )
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch
        if sample_wise_grads_per_batch:
            allowed: tuple[str, ...] = ("sum", "mean", "outputs")
            missing = "sum"
            ctx = "TracInCP with sample_wise_grads_per_batch=True"
        else:
            allowed, missing = ("none", "outputs"), "none"
            ctx = "TracInCP with sample_wise_grads_per_batch=False (the default)"
        self.reduction_type = loss_mode(loss_fn, "loss_fn", allowed, ctx, missing)
        self.test_reduction_type = (
            self.reduction_type
            if test_loss_fn is None
            else loss_mode(test_loss_fn, "test_loss_fn", allowed, ctx, missing)
        )
        self.layers = layers
        self._param_names = self._select_params(layers)
        self._plan: Plan | None = None
        self._self_influence: torch.Tensor | None = None
        self._score_cache: OrderedDict[tuple[str, bool], torch.Tensor | TopKPair] = OrderedDict()
        self._warned_loop = False

    # ------------------------------------------------------------------ parameters
    def _select_params(self, layers: Any) -> list[str]:
        model = self._net
        if layers is None:
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            if not trainable:
                raise ValueError("the model has no parameter with requires_grad=True; pass layers=[...] explicitly.")
            return trainable
        if isinstance(layers, (str, nn.Module)) or not hasattr(layers, "__iter__"):
            raise TypeError(f"layers must be a list of layer names, e.g. ['fc2', 'fc3'], not {type(layers).__name__}.")
        layers = list(layers)
        if not layers:
            raise ValueError("layers is empty: pass None to use every trainable parameter, or a list of layer names.")
        names: list[str] = []
        for layer in layers:
            lname, mod = resolve_module(self.model, layer, "layers")
            own = [f"{lname}.{n}" for n, _ in mod.named_parameters()]
            if not own:
                raise ValueError(
                    f"layers: {lname!r} ({type(mod).__name__}) has no parameters; pick layers with weights."
                )
            names += [n for n in own if n not in names]
        return names

    def _make_plan(self, state: dict, batch: tuple, what: str) -> None:
        """Which selected Linear layers can be factorised (2-D input, called once)."""
        selected = set(self._param_names)
        candidates = {
            name: m
            for name, m in self._net.named_modules()
            if isinstance(m, nn.Linear) and f"{name}.weight" in selected
        }
        convs = {
            name: m
            for name, m in self._net.named_modules()
            if isinstance(m, nn.Conv2d)
            and f"{name}.weight" in selected
            and m.groups == 1
            and not isinstance(m.padding, str)
            and m.padding_mode == "zeros"
        }
        candidates.update(convs)
        seen: dict[str, list] = {n: [] for n in candidates}
        handles = [
            m.register_forward_hook(lambda mod, i, o, _n=n: seen[_n].append(tuple(i[0].shape)))
            for n, m in candidates.items()
        ]
        try:
            with torch.no_grad():
                self._forward(state, tuple(batch[:-1]), what)
        finally:
            for h in handles:
                h.remove()
        n = batch_len(batch)
        factored: list[HookedLayer] = []
        conv: list[HookedLayer] = []
        for name, m in candidates.items():
            shapes = seen[name]
            ndim = 4 if isinstance(m, nn.Conv2d) else 2
            if len(shapes) == 1 and len(shapes[0]) == ndim and shapes[0][0] == n:
                entry = HookedLayer(name, m, m.bias is not None and f"{name}.bias" in selected)
                (conv if ndim == 4 else factored).append(entry)
        hooked = factored + conv
        fparams = {f"{h.name}.weight" for h in hooked} | {f"{h.name}.bias" for h in hooked if h.has_bias}
        dense = [p for p in self._param_names if p not in fparams]
        self._plan = Plan(factored, conv, dense)

    # ------------------------------------------------------------------ per-example gradients
    def _blocks(self, state: dict, batch: tuple, mode: str, loss_fn: Any, what: str) -> list[Block]:
        if self._plan is None:
            self._make_plan(state, batch, what)
        assert self._plan is not None
        factored, conv, dense = self._plan
        n = batch_len(batch)
        blocks: list[Block] = []
        hooked = factored + conv
        if hooked:
            caps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

            def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, _n: str) -> torch.Tensor:
                o = out if out.requires_grad else out.detach().requires_grad_(True)
                caps[_n] = (inp[0].detach(), o)
                return o

            handles = [h.module.register_forward_hook(lambda mod, i, o, _n=h.name: hook(mod, i, o, _n)) for h in hooked]
            try:
                with torch.enable_grad():
                    out = self._forward(state, tuple(batch[:-1]), what)
                    total = total_loss(mode, loss_fn, out, batch[-1], n)
                    outs = [caps[h.name][1] for h in hooked]
                    grads = torch.autograd.grad(total, outs, allow_unused=True)
            finally:
                for h in handles:
                    h.remove()
            conv_rows = []
            for (name, mod, has_bias), g, o in zip(hooked, grads, outs, strict=True):
                g = torch.zeros_like(o) if g is None else g
                if isinstance(mod, nn.Conv2d):
                    conv_rows.append(_conv2d_sample_grads(mod, caps[name][0], g, has_bias))
                else:
                    blocks.append(FactoredBlock(g.reshape(n, -1), caps[name][0].reshape(n, -1), has_bias))
            if conv_rows:
                blocks.append(DenseBlock(torch.cat(conv_rows, dim=1)))
        if dense:
            blocks.append(DenseBlock(self._dense_grads(state, dense, batch, mode, loss_fn, what)))
        return blocks

    def _dense_grads(
        self, state: dict, dense: list[str], batch: tuple, mode: str, loss_fn: Any, what: str
    ) -> torch.Tensor:
        dp = {k: state[k] for k in dense}
        rest = {k: v for k, v in state.items() if k not in dp}
        model = self._net
        n_feat = len(batch) - 1

        def loss_one(params: dict[str, torch.Tensor], *ex: Any) -> torch.Tensor:
            feats = tuple(x.unsqueeze(0) if isinstance(x, torch.Tensor) else x for x in ex[:n_feat])
            lab = ex[-1].unsqueeze(0) if isinstance(ex[-1], torch.Tensor) else ex[-1]
            out = functional_call(model, {**rest, **params}, feats)
            return total_loss(mode, loss_fn, out, lab, 1)

        in_dims = (None,) + tuple(0 if isinstance(x, torch.Tensor) else None for x in batch)
        n = batch_len(batch)
        per_row = sum(dp[k].numel() for k in dense)
        step = max(1, min(n, (1 << 26) // max(1, per_row)))
        outs = []
        try:
            for s in range(0, n, step):
                sub = tuple(x[s : s + step] if isinstance(x, torch.Tensor) else x for x in batch)
                g = vmap(grad(loss_one), in_dims=in_dims)(dp, *sub)
                outs.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in dense], dim=1))
        except (RuntimeError, NotImplementedError) as e:
            if "could not take" in str(e):
                raise
            return self._dense_grads_loop(dp, rest, dense, batch, mode, loss_fn, e)
        return torch.cat(outs)

    def _dense_grads_loop(
        self,
        dp: dict[str, torch.Tensor],
        rest: dict[str, torch.Tensor],
        dense: list[str],
        batch: tuple,
        mode: str,
        loss_fn: Any,
        err: Exception,
    ) -> torch.Tensor:
        if not self._warned_loop:
            self._warn(
                f"torch.func.vmap could not run this model ({type(err).__name__}: {str(err)[:200]}); falling back "
                "to a slower per-example gradient loop.",
                stacklevel=6,
            )
            self._warned_loop = True
        params = {k: v.detach().requires_grad_(True) for k, v in dp.items()}
        rows = []
        n = batch_len(batch)
        for i in range(n):
            feats = tuple(x[i : i + 1] if isinstance(x, torch.Tensor) else x for x in batch[:-1])
            lab = batch[-1][i : i + 1]
            with torch.enable_grad():
                out = functional_call(self._net, {**rest, **params}, feats)
                loss = total_loss(mode, loss_fn, out, lab, 1)
                gs = torch.autograd.grad(loss, [params[k] for k in dense], allow_unused=True)
            grads = [torch.zeros_like(params[k]) if g is None else g for k, g in zip(dense, gs, strict=True)]
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows)

    cpu_chunk = 512  # rows per forward/backward on the CPU (scores do not depend on it)
    gpu_rows = 2048  # small loader batches (workers) are merged up to this many rows on a GPU
    max_grad_floats = 1 << 27  # cap on materialised per-example gradient floats per chunk (512 MB)

    def _merge_rows(self) -> int:
        return self.cpu_chunk if self.device.type == "cpu" else self.gpu_rows

    def _row_chunk(self, n: int) -> int:
        assert self._plan is not None
        conv, dense = self._plan.conv, self._plan.dense
        names = [f"{h.name}.weight" for h in conv] + [f"{h.name}.bias" for h in conv if h.has_bias] + list(dense)
        sizes = dict((k, v.numel()) for k, v in self._net.state_dict().items())
        per_row = max(1, sum(sizes.get(k, 0) for k in names))
        cap = max(1, self.max_grad_floats // per_row)
        return min(n, cap, self._rows(self._merge_rows(), backward=True))  # activation memory bounds the rows

    def _ensure_plan(self, states: list[dict], batch: tuple, what: str) -> None:
        """Measure the activation memory of a row and make the plan (on at most the rows one forward takes)."""
        self._measure_rows(states[0], batch, what)
        if self._plan is None:
            n = batch_len(batch)
            self._make_plan(states[0], split_rows(batch, n, self._rows(self._merge_rows(), backward=True))[0], what)

    def _all_blocks(
        self, batch: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int = 0
    ) -> list[list[Block]]:
        """Per-checkpoint blocks of ``batch`` (rows ``offset``.. of its source, for error messages)."""
        self._ensure_plan(states, batch, what)
        n = batch_len(batch)
        chunk = self._row_chunk(n)
        if chunk < n:
            parts = [
                self._all_blocks_rows(b, states, mode, loss_fn, what, offset + i * chunk)
                for i, b in enumerate(split_rows(batch, n, chunk))
            ]
            return [_blocks_cat([p[c] for p in parts]) for c in range(len(states))]
        return self._all_blocks_rows(batch, states, mode, loss_fn, what, offset)

    def _all_blocks_rows(
        self, batch: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int = 0
    ) -> list[list[Block]]:
        out, sums = [], []
        for state in states:
            blocks = self._blocks(state, batch, mode, loss_fn, what)
            sums.append(sum((t.sum() for b in blocks for t in b.tensors()), torch.zeros((), device=self.device)))
            out.append(blocks)

        def locate() -> None:
            n = batch_len(batch)
            bad = torch.stack(
                [
                    functools.reduce(
                        torch.logical_or,
                        [~torch.isfinite(t.reshape(n, -1)).all(1) for b in blocks for t in b.tensors()],
                    )
                    for blocks in out
                ],
                1,
            )
            self._raise_nonfinite({"gradients": bad}, offset, what, rows_getter([batch], offset), False)

        self._check_all_finite(torch.stack(sums).reshape(1, -1), [f"gradients for the {what}"], locate)
        return out

    # ------------------------------------------------------------------ passes
    def _pass(
        self, test_blocks: list[list[Block]] | None, show_progress: bool, phase: str, sink: ScoreSink | None = None
    ) -> torch.Tensor:
        """One pass over the training data: the self-influence (returned, ``(n_train,)``) and, with
        ``test_blocks``, each training batch's scores against them handed to ``sink`` (the matrix or a running
        top-k: nothing here grows with ``n_test * n_train``)."""
        states, lrs = self._checkpoint_states(show_progress)
        self_parts = []
        prog = _Progress(phase, self._n_train(), show_progress, self.progress_callback)
        try:
            for offset, batch in self._train_batches(self._pass_rows(states[0], self._merge_rows(), backward=True)):
                per_ckpt = self._all_blocks(batch, states, self.reduction_type, self.loss_fn, "training batch", offset)
                sq = _total(lr * _blocks_sq(b) for lr, b in zip(lrs, per_ckpt, strict=True))
                self_parts.append(sq.cpu())
                if test_blocks is not None and sink is not None:
                    sc = _total(lr * _blocks_dot(tb, b) for lr, tb, b in zip(lrs, test_blocks, per_ckpt, strict=True))
                    sink.add(sc, offset)
                prog.update(batch_len(batch))
        finally:
            prog.close()
        if not self_parts:
            raise ValueError("train_dataset is empty: there is nothing to compute influence against.")
        self_inf = torch.cat(self_parts)
        if self._self_influence is None:
            self._self_influence = self_inf
            self._cache_save(self._cache_file("self", self._key()), {"self": self_inf})
        return self_inf

    def _key(self) -> str:
        return f"{','.join(self._param_names)}|{self.reduction_type}"

    def _test_key(self, batches: list[tuple]) -> str:
        h = hashlib.sha256()
        hash_tensors(batches, h)
        return h.hexdigest()

    @locked
    def fit(self, show_progress: bool = False) -> TracInCP:
        """Compute the training set's self-influence now (one pass over the training data, or a read of
        ``cache_dir``), with tqdm bars when ``show_progress``. Optional: ``self_influence()`` does it on first
        use. Returns ``self``; raises what ``self_influence()`` raises."""
        self.self_influence(show_progress=show_progress)
        return self

    @locked
    def influence(
        self,
        inputs: Inputs | None = None,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
        aggregate: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        """Influence of every training example on each example of ``inputs``.

        With ``k``, one pass keeps a running top-k of both the proponents and the opponents (never the whole
        score matrix: memory ``n_test * k`` values plus one training batch's scores), so asking for the other
        direction, or for a smaller ``k``, of the same inputs afterwards costs no second pass. Among equal
        scores the lower training index comes first (``torch.topk`` leaves ties in any order), whatever the
        batching. ``k=None`` builds the ``(n_test, n_train)`` matrix (a later top-k of
        the same inputs reads it). Results are kept up to ``score_cache_bytes`` (512 MB, least recently used
        dropped first; a larger matrix is returned but not kept).

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            k: None (the default) for the full score matrix; a positive int for the ``k`` most influential
                training examples of each test example.
            proponents: with ``k``: True (the default) for the highest scores, False for the opponents (the
                lowest scores, most negative first).
            show_progress: show tqdm bars for the passes.
            aggregate: score the sum of the test examples' gradients instead: one row (Captum's ``aggregate``).

        Returns:
            ``k=None``: a float tensor ``(n_test, n_train)`` on the CPU (``(1, n_train)`` with
            ``aggregate=True``), in the checkpoints' dtype. ``k`` int: ``KMostInfluentialResults(indices,
            influence_scores)``, both ``(n_test, min(k, n_train))`` on the CPU, ``indices`` int64, sorted by
            descending score (proponents) or ascending score (opponents).

        Raises:
            TypeError, ValueError: ``k`` is not a positive int or None, ``proponents`` is not a bool.
            ValueError: ``k=None`` and the score matrix is larger than this machine's memory (before the pass).
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        k = check_k(k)
        proponents = check_proponents(proponents)
        batches = self._test_batches(inputs, show_progress=show_progress)
        key = self._test_key(batches)
        found = self._cached_scores(key, k, aggregate)
        if found is None:
            with self._computing():
                states, _ = self._checkpoint_states(show_progress)
                if k is None:
                    self._check_matrix_fits(1 if aggregate else sum(batch_len(b) for b in batches), states)
                prog = _Progress("test gradients", sum(batch_len(b) for b in batches), show_progress, None)
                parts, start = [], 0
                try:
                    for b in batches:
                        mode, loss_fn = self.test_reduction_type, self.test_loss_fn
                        parts.append(self._all_blocks(b, states, mode, loss_fn, "test batch", start))
                        start += batch_len(b)
                        prog.update(batch_len(b))
                finally:
                    prog.close()
                test_blocks = [_blocks_cat([p[c] for p in parts]) for c in range(len(states))]
                del parts
                sink = FullScores(aggregate, self._n_train()) if k is None else RunningTopK(aggregate, k)
                self._pass(test_blocks, show_progress, "influence", sink)
            entry = sink.result()
            shared = self._cache_put((key, aggregate), entry)
        else:
            entry, shared = found
            if show_progress:  # no pass needed: still show that the call ran
                _Progress("influence (cached)", self._n_train(), True, None).finish()
        if isinstance(entry, TopKPair):
            assert k is not None  # a top-k entry is only found or made for a k
            return entry.get(k, proponents)
        if k is None:
            return entry.clone() if shared else entry
        return topk_of(entry, k).get(k, proponents)

    score_cache_bytes = 512 << 20  # the query results kept for later calls (least recently used dropped first)

    def _cached_scores(self, key: str, k: int | None, aggregate: bool) -> tuple[torch.Tensor | TopKPair, bool] | None:
        """A kept result that answers this call, and whether it is the cache's own (to be copied before it is
        returned); None when a pass is needed. A top-k answers a ``k`` up to its own; a score matrix answers
        anything (its aggregate row too)."""
        for agg in (aggregate, False) if aggregate else (False,):
            entry = self._score_cache.get((key, agg))
            if entry is None or (isinstance(entry, TopKPair) and (k is None or k > entry.k or agg != aggregate)):
                continue
            self._score_cache.move_to_end((key, agg))
            if agg != aggregate:
                assert isinstance(entry, torch.Tensor)
                return entry.sum(0, keepdim=True), False
            return entry, True
        return None

    def _cache_put(self, key: tuple[str, bool], entry: torch.Tensor | TopKPair) -> bool:
        """Keep ``entry`` within ``score_cache_bytes`` (dropping the oldest); one larger than that is not kept.
        Returns whether it was kept."""
        budget = self.score_cache_bytes
        if _entry_bytes(entry) > budget:
            return False
        self._score_cache[key] = entry
        self._score_cache.move_to_end(key)
        while sum(_entry_bytes(e) for e in self._score_cache.values()) > budget:
            self._score_cache.popitem(last=False)
        return True

    def _check_matrix_fits(self, rows: int, states: list[dict[str, torch.Tensor]]) -> None:
        """``k=None`` asks for the whole ``(rows, n_train)`` matrix: refuse it before the pass when it is larger
        than this machine's memory (the top-k needs only ``rows * k`` values)."""
        n_train, memory = self._n_train(), _host_memory()
        if n_train is None or memory is None:
            return
        need = rows * n_train * states[0][self._param_names[0]].element_size()
        if need > memory:
            raise ValueError(
                f"influence(k=None) returns the full score matrix of {rows} test row(s) x {n_train} training rows "
                f"({human(need)}), more than this machine's memory ({human(memory)}). Pass k=... (e.g. k=100) for "
                "the most influential training examples of each test row (proponents and opponents, kept "
                "together), or fewer test rows per call."
            )

    @locked
    def influence_by_checkpoint(self, inputs: Inputs, train_indices: Any) -> torch.Tensor:
        """Each checkpoint's term ``lr_c grad_c(z_t) . grad_c(z_i)`` of the influence of training examples
        ``train_indices`` on each example of ``inputs``: whether an influence comes from early or late training.
        Only the given training rows are read (no pass over the training data); the terms sum over the
        checkpoints to ``influence(inputs, k=None)[:, train_indices]``.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            train_indices: positions in the training set (a list of ints, or a 1-D int tensor / array), read from
                ``train_dataset`` by index (a map-style dataset).

        Returns:
            A float tensor ``(n_test, len(train_indices), n_checkpoints)`` on the CPU, in the checkpoints' dtype,
            the last axis in ``checkpoints`` order (``learning_rates()`` gives each one's ``lr_c``).

        Raises:
            TypeError, ValueError: ``train_indices`` is not a non-empty sequence of ints in ``[0, n_train)``, the
                training set cannot be read by index; what ``influence`` raises for ``inputs``.
        """
        idx = check_train_indices(train_indices, self._n_train())
        batches = self._test_batches(inputs)
        with self._computing():
            states, lrs = self._checkpoint_states()
            parts, start = [], 0
            for b in batches:
                mode, loss_fn = self.test_reduction_type, self.test_loss_fn
                parts.append(self._all_blocks(b, states, mode, loss_fn, "test batch", start))
                start += batch_len(b)
            test_blocks = [_blocks_cat([p[c] for p in parts]) for c in range(len(states))]
            rows = self._train_rows(idx)
            train_blocks = self._all_blocks(rows, states, self.reduction_type, self.loss_fn, "training rows")
            terms = [lr * _blocks_dot(tb, rb) for lr, tb, rb in zip(lrs, test_blocks, train_blocks, strict=True)]
        return torch.stack(terms, -1).cpu()

    @locked
    def self_influence(
        self, inputs: Inputs | None = None, show_progress: bool = False, outer_loop_by_checkpoints: bool = False
    ) -> torch.Tensor:
        """Self-influence ``sum_c lr_c |grad_c(z)|^2`` of each example: high values flag unusual or mislabelled
        training examples.

        Args:
            inputs: None (the default) for the training set: one pass, then kept (and saved in ``cache_dir``).
                Or one batch ``(*features, labels)`` or a ``DataLoader`` of such batches (scored with
                ``loss_fn``), read one batch at a time: only ``n`` floats are kept, whatever its size.
            show_progress: show tqdm bars for the passes.
            outer_loop_by_checkpoints: accepted for Captum compatibility; the result does not depend on it
                (every checkpoint is loaded once per instance anyway).

        Returns:
            A float tensor ``(n,)`` on the CPU, in the checkpoints' dtype (``n = len(train_dataset)`` when
            ``inputs`` is None).

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); for a ``DataLoader``, each batch is checked as it is read (a bad
                later batch stops the call there). ValueError when gradients are not finite, naming the rows.
        """
        if inputs is None:
            if self._self_influence is None:
                cached = self._cache_load(self._cache_file("self", self._key()))
                if cached is not None:
                    self._self_influence = cached["self"].cpu()
                    if show_progress:
                        _Progress("self influence (cached)", len(self._self_influence), True, None).finish()
                else:
                    with self._computing():
                        self._pass(None, show_progress, "self influence")
            elif show_progress:
                _Progress("self influence (cached)", len(self._self_influence), True, None).finish()
            assert self._self_influence is not None  # set by the cache read or the pass above
            return self._self_influence.clone()
        # a DataLoader is streamed (each batch checked as it comes): its rows never need to fit in memory at once
        batches = self._checked_batches(input_batches(inputs), loss="train", show_progress=show_progress)
        first = next(batches)  # the first batch is checked before any gradient
        total = batch_len(first)
        if isinstance(inputs, torch.utils.data.DataLoader):
            try:
                total = len(inputs.dataset)  # type: ignore[arg-type]
            except TypeError:
                total = -1
        with self._computing():
            states, lrs = self._checkpoint_states(show_progress)
            out, start = [], 0
            prog = _Progress("self influence", total if total >= 0 else None, show_progress, self.progress_callback)
            try:
                for b in itertools.chain([first], batches):
                    per_ckpt = self._all_blocks(b, states, self.reduction_type, self.loss_fn, "batch", start)
                    out.append(_total(lr * _blocks_sq(x) for lr, x in zip(lrs, per_ckpt, strict=True)).cpu())
                    start += batch_len(b)
                    prog.update(batch_len(b))
            finally:
                prog.close()
        return torch.cat(out)

    # ------------------------------------------------------------------ embeddings
    @locked
    def compute_intermediate_quantities(self, inputs: Inputs, aggregate: bool = False) -> torch.Tensor:
        """Captum's per-example "embeddings" of ``inputs``: per checkpoint c, ``sqrt(lr_c)`` times the
        per-example gradient of the training loss (``loss_fn``) w.r.t. the selected parameters (in ``layers``
        order, each flattened), concatenated over the checkpoints. The dot product of two rows is their
        influence score.

        The gradients of factorised Linear layers are materialised here (a bounded number of rows at a time).
        Captum scales each checkpoint by ``lr_c`` instead of ``sqrt(lr_c)``, so its dot products carry
        ``lr_c ** 2`` (they equal with lr 1); ours are the influence scores its docstring promises.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            aggregate: return the sum over the examples (one row) instead.

        Returns:
            A float tensor ``(n, D * C)`` on the CPU (``(1, D * C)`` with ``aggregate=True``), ``D`` the number
            of selected parameters and ``C`` of checkpoints, in the checkpoints' dtype.

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        batches = self._test_batches(inputs, loss="train")
        with self._computing():
            states, lrs = self._checkpoint_states()
            roots = [sqrt_lr(lr, p) for lr, p in zip(lrs, self.checkpoints, strict=True)]
            sizes = [states[0][k].numel() for k in self._param_names]
            D, C = sum(sizes), len(states)
            dtype = states[0][self._param_names[0]].dtype
            n_all = sum(batch_len(b) for b in batches)
            out = torch.zeros(1 if aggregate else n_all, D * C, dtype=dtype, device=self.device if aggregate else "cpu")
            row = 0
            for b in batches:
                self._ensure_plan(states, b, "batch")
                n = batch_len(b)
                step = max(1, min(self._row_chunk(n), self.max_grad_floats // max(1, D)))
                for part in split_rows(b, n, step):
                    m = batch_len(part)
                    per_ckpt = self._all_blocks_rows(part, states, self.reduction_type, self.loss_fn, "batch")
                    for c, (root, blocks) in enumerate(zip(roots, per_ckpt, strict=True)):
                        named = self._named_grads(blocks, m)
                        cols = torch.cat([named[k] for k in self._param_names], dim=1) * root
                        if aggregate:
                            out[0, c * D : (c + 1) * D] += cols.sum(0)
                        else:
                            out[row : row + m, c * D : (c + 1) * D] = cols
                    row += m
        return out.cpu()

    def _named_grads(self, blocks: list[Block], m: int) -> dict[str, torch.Tensor]:
        """Per-example gradients ``(m, numel)`` of every selected parameter, by name, from one checkpoint's
        blocks (a factorised Linear's weight gradient is the outer product g a^T, row-major like the weight)."""
        assert self._plan is not None
        factored, conv, dense = self._plan
        sizes = {k: v.numel() for k, v in self._net.state_dict().items()}
        out: dict[str, torch.Tensor] = {}
        it = iter(blocks)
        for layer in factored:
            blk = next(it)
            assert isinstance(blk, FactoredBlock)
            out[f"{layer.name}.weight"] = (blk.g.unsqueeze(2) * blk.a.unsqueeze(1)).reshape(m, -1)
            if layer.has_bias:
                out[f"{layer.name}.bias"] = blk.g
        conv_names = [k for h in conv for k in [f"{h.name}.weight"] + ([f"{h.name}.bias"] if h.has_bias else [])]
        for names in (conv_names, dense):
            if not names:
                continue
            dense_blk = next(it)
            assert isinstance(dense_blk, DenseBlock)
            rows, off = dense_blk.v, 0
            for k in names:
                out[k] = rows[:, off : off + sizes[k]]
                off += sizes[k]
        return out
