"""The constructor arguments of the engine's classes, each paragraph written once.

``@document`` builds a class's docstring from its own (an introduction, then usually an ``Examples:`` section)
and one ``Args:`` entry per argument of its ``__init__``, in signature order, inserted before ``Examples:``.
An entry is the class's own paragraph (``OWN``) when it has one, else the shared one (``SHARED``); an argument
with neither is an error at import, so every argument is documented by construction.

The documentation site reads the source without importing it: its griffe extension (``docs/griffe_argdocs.py``)
loads this file on its own and calls ``build`` with what griffe read, so ``help()`` and the site show the same
text (``tests/engine/test_docs.py`` checks it). This module imports the standard library only, for that reason.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T", bound=type)

WIDTH = 116  # of a line of the built docstring, its indentation included
_TORCHRUN = "[Several GPUs: torchrun][engine-torchrun] on the engine page of the documentation"

# The paragraphs shared by the classes that take the argument (the TracInCPFast family's where they differ).
SHARED: dict[str, str] = {
    "model": """the trained ``nn.Module`` (an ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper is fine: the
        module inside is computed on). It is called as ``model(*batch[:-1])`` (a dict batch as
        ``model(**features)``) and must return a tensor whose first dimension is the batch, or a mapping or
        ``ModelOutput`` holding one under ``"logits"`` (``output_key``). Scores are computed in eval mode, and after
        every call the model is as it was given (weights, train/eval flags, ``requires_grad``, device).""",
    "final_fc_layer": """the model's last fully-connected layer, as the module (``model.fc3``) or its name
        (``"fc3"``); ``find_final_linear_layer(model, x)`` finds it. It must run exactly once per forward pass. An
        unknown name is a ``ValueError`` suggesting close ones.""",
    "train_dataset": """the training data: a ``Dataset`` whose items are ``(*features, label)`` or dicts (a Hugging
        Face ``datasets.Dataset`` with ``.with_format("torch")``, a list of dicts: the labels under ``"labels"`` or
        ``"label"``, or ``label_key``), or a ``DataLoader`` of such batches (any ``collate_fn``, e.g.
        ``transformers.DataCollatorWithPadding``) that yields every row once, in order (no shuffling sampler, no
        ``drop_last``). Batches are joined into larger forwards only where every feature tensor has one row per
        label; any other batch (``model(tokens, offsets)`` of an ``nn.EmbeddingBag``) is computed exactly as the
        loader gives it. Other forms (a tuple ``(X, Y)``) are a ``TypeError`` at construction saying how to wrap
        them.""",
    "checkpoints": """the checkpoint files: a list of paths (natural-sorted, as Captum), one file, or a folder
        (every regular, non-hidden file in it, whatever its extension). Each is loaded once per instance.""",
    "checkpoints_load_func": """``f(model, path) -> lr``: loads the checkpoint at ``path`` into ``model`` and
        returns its learning rate (a finite number >= 0; checked as each loads). Default None: a state dict, or a
        dict holding one under ``"model_state_dict"`` / ``"state_dict"`` (learning rate from its
        ``"learning_rate"`` or ``"lr"`` entry, else 1.0), loaded with ``torch.load(weights_only=weights_only)``.""",
    "layers": """the layers whose parameters the gradients are taken of: a list of names such as
        ``["fc2", "fc3"]`` (or the modules themselves). Default None: every parameter with ``requires_grad=True``.
        An unknown name is a ``ValueError`` suggesting close ones.""",
    "loss_fn": """the training loss ``loss_fn(outputs, labels)`` with ``reduction="sum"`` or ``"mean"`` (the
        gradient is then multiplied back by the batch size, as Captum); required (None is a ``ValueError``). A
        loss without a ``reduction`` attribute is assumed to sum, with a ``TracInWarning``.""",
    "batch_size": """rows per batch when ``train_dataset`` is a Dataset (ignored for a DataLoader). Default None
        means 512 (Captum's default is 1). Scores do not depend on it: the rows per forward pass follow the
        measured activation memory.""",
    "test_loss_fn": """the loss of the test examples in ``influence``, with the same rules (default None:
        ``loss_fn``). ``self_influence(inputs)`` uses ``loss_fn``.""",
    "vectorize": """accepted for Captum compatibility (Captum's jacobian switch); the gradients here need no
        jacobian, so it changes nothing (default False).""",
    "sample_wise_grads_per_batch": """Captum's switch between a per-example loss (False, the default) and a batch
        loss (True) whose per-example gradients Captum takes with hooks. Here both give the same per-example
        gradients; it only decides which ``loss_fn.reduction`` is accepted.""",
    "nearest_neighbors": """the index answering top-k queries: a ``NearestNeighbors`` (``setup(data)``,
        ``get_nearest_neighbors(query, k)``). Default None: ``AnnoyNearestNeighbors()`` (approximate);
        ``ExactNearestNeighbors()`` searches exactly. Anything else is a ``TypeError``. With a ``cache_dir`` the
        training embeddings are also written into the store (the file's tag a hash of the store,
        ``projection_dim``, ``seed`` and the projection), and an ``AnnoyNearestNeighbors`` is built on disk there
        and memory-mapped by later instances with the same settings instead of being rebuilt; other indexes get
        ``setup`` with the embeddings, memory-mapped from that file when the factors are streamed
        (``max_memory``).""",
    "projection_dim": """None (the default): nothing is projected, an embedding has ``dim(g) * dim(a)`` entries
        per checkpoint and its dot products are the exact scores. A positive int: when ``dim(g) * dim(a)`` is
        larger, ``g`` and ``a`` are each projected to ``int(sqrt(projection_dim))`` dimensions (at most their own)
        by Gaussian matrices: a smaller index, approximate scores. Anything else is a ``ValueError``.""",
    "seed": """the seed of the projection matrices' own ``torch.Generator`` (default 0; the global RNG is left
        alone). Used only when something is projected.""",
    "rerank": """keyword-only, default 50: ``influence(k=...)`` retrieves ``rerank * k`` candidates from the index
        and scores them exactly from the cached factors, so the returned scores are exact and the recall is much
        higher than the index alone gives. None returns the index's own (approximate) scores, as Captum does.
        Anything but a positive int or None is a ``ValueError``.""",
    "device": """where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` (default None: the
        model's device). Checked against this machine at construction (a missing GPU is a ``ValueError``); the
        model is moved there for each call and back afterwards, and batches are moved for you.""",
    "num_workers": """``DataLoader`` workers reading ``train_dataset`` (not used when it is a DataLoader). Default
        None: none on the CPU, for a ``TensorDataset`` (sliced directly) or a recognised torchvision CIFAR dataset
        (read vectorised); on a GPU up to one per spare core (at most 16), trimmed to ``sqrt(read time / 20 ms)``
        after timing a few items. Scores do not depend on it.""",
    "progress_callback": """``f(phase: str, done: int, total: int)``, called as each phase of a long computation
        advances (``total`` is -1 when unknown). Raising from it (e.g. ``tracin_widgets.influence.Cancelled``)
        aborts cleanly: the model is restored and nothing partial is used as complete (a ``cache_dir`` store
        keeps the blocks written so far, and the next call resumes from them). Default None.""",
    "cache_dir": f"""a folder where the training-set factors are written during the pass, as a store (plain
        row-major files and a ``manifest.json``), and reused by later instances of ``TracInCPFast`` and
        ``TracInCPFastRandProj`` alike (default None: kept in memory only). An interrupted pass (an exception,
        ``Cancelled``, Ctrl-C, a killed job) resumes from the last block written; a second process writing the
        same store is refused. A store is reused only when the loss (type and settings), the layer, the checkpoint
        files' contents and learning rates, ``checkpoints_load_func``, the model's architecture and precision, the
        device type, ``data_version`` and the training data are all the same. A folder that cannot be written
        gives a ``TracInWarning`` before the pass (results stay in memory); the checkpoints folder itself is a
        ``ValueError``. Under ``torchrun`` the ranks split the pass and share its rows through the store, so
        ``cache_dir`` is then required, a folder every rank shares: see {_TORCHRUN}.""",
    "label_key": """the key of a dict batch that holds the labels (default None: ``"labels"``, else ``"label"``);
        every other key is passed to the model. A dict batch without it is a ``ValueError`` naming the keys.""",
    "output_key": """what of the model's output to differentiate when it is not a tensor: the key of a mapping or
        ``ModelOutput`` (default None: ``"logits"``), or the index into a tuple output.""",
    "weights_only": """passed to ``torch.load`` by the default ``checkpoints_load_func`` (default True: only
        tensors and plain containers are unpickled). Pass False only for checkpoint files you trust.""",
    "data_version": """any string naming the version of the training data (default None), part of the cache key.
        Array-backed datasets (``TensorDataset``, a ``Subset`` of one, torchvision's CIFAR/MNIST) are hashed in
        full; any other dataset only by its type, length and 24 items spread over it, so change ``data_version``
        when its contents change (a dataset without a length is reused only with one).""",
    "max_memory": """the most memory the training-set factors may take: bytes as an int, or a string such as
        ``"512MB"`` or ``"10GiB"`` (MB/GB: powers of 1000, MiB/GiB: of 1024, as in Hugging Face accelerate).
        Factors larger than that stay in the ``cache_dir`` store and every query reads it block by block (same
        results, at disk speed); without a ``cache_dir`` that is a ``ValueError`` before the pass. Default None:
        on the compute device when they take less than 3/4 of a GPU's free memory (half of the CPU's), else in
        host memory, else (with a ``cache_dir``) read from the store.""",
    "factor_dtype": """the dtype the factors are kept in: None (the default: as computed, ``torch.float32`` for a
        float32 model, Captum's numbers), ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` (half the
        memory, disk and traffic; products still accumulate in float32). Half-precision scores are approximate:
        on the tutorial's workload bfloat16 moves a test row's scores by at most 0.12 % of its largest score and
        keeps its top-10. Self-influence stays exact (its norms are kept in the computation dtype). Anything else
        is a ``ValueError``.""",
}

# A class's own paragraph where its argument means something else than the shared one says.
OWN: dict[str, dict[str, str]] = {
    "TracInCPFastRandProj": {
        "test_loss_fn": """the loss of the test examples in ``influence`` and ``compute_intermediate_quantities``,
            with the same rules (default None: ``loss_fn``). ``self_influence(inputs)`` uses ``loss_fn``.""",
    },
    "TracInCP": {
        "loss_fn": """the training loss ``loss_fn(outputs, labels)``. With ``sample_wise_grads_per_batch=False``
            (the default) its ``reduction`` must be ``"none"`` (one loss per example); with True, ``"sum"`` or
            ``"mean"`` (the gradient is then multiplied back by the batch size, as Captum). Default None: the
            gradient of the summed model outputs. A loss without a ``reduction`` attribute is assumed to have
            ``"none"`` (``"sum"`` with ``sample_wise_grads_per_batch=True``), with a ``TracInWarning``.""",
        "batch_size": """rows per batch when ``train_dataset`` is a Dataset (ignored for a DataLoader). Default
            None means 512 (Captum's default is 1). Batches are cut into chunks (see the memory note above), so with
            a per-row loss (each row's loss depends only on its own output: ``reduction="none"``, ``"sum"``, or
            ``"mean"`` over the rows) scores do not depend on it; a loss that couples the rows of a batch (a
            weighted ``CrossEntropyLoss`` with ``"mean"`` divides by the batch's summed weights, a contrastive
            loss) gives per-example gradients that depend on the rows computed together.""",
        "test_loss_fn": """the loss of the test examples in ``influence``, with the same rules (default None:
            ``loss_fn``). ``self_influence`` and ``compute_intermediate_quantities`` use ``loss_fn``.""",
        "progress_callback": """``f(phase: str, done: int, total: int)``, called as each phase of a long
            computation advances (``total`` is -1 when unknown). Raising from it (e.g.
            ``tracin_widgets.influence.Cancelled``) aborts cleanly: the model is restored and nothing partial is
            cached. Default None.""",
        "cache_dir": """a folder where the training set's self-influence scores are saved and reused by later
            instances (default None: kept in memory only). A file is reused only when the loss (type and
            settings), the layers, the checkpoint files' contents and learning rates, ``checkpoints_load_func``,
            the model's architecture and precision, the device type, ``data_version`` and the training data are
            all the same. A folder that cannot be written gives a ``TracInWarning`` before the pass (results stay
            in memory); the checkpoints folder itself is a ``ValueError``.""",
        "max_memory": """the budget for the per-example gradients of one chunk of training rows: bytes as an int,
            or a string such as ``"2GB"`` or ``"512MiB"`` (MB/GB: powers of 1000, MiB/GiB: of 1024, as in Hugging
            Face accelerate). Each batch is cut into chunks whose per-example gradients fit it; a smaller budget
            means more, smaller chunks (slower, the same scores). Default None: a safe share of the free memory
            (``max_grad_floats`` values, 512 MB in float32, but at most half of what is free, read at each chunk).
            The forward and backward of a chunk are bounded by the free memory in any case.""",
    },
}


def paragraph(cls_name: str, arg: str) -> str:
    """The paragraph documenting ``arg`` of class ``cls_name``, on one line."""
    text = OWN.get(cls_name, {}).get(arg) or SHARED.get(arg)
    if text is None:
        raise LookupError(
            f"{cls_name}.__init__ takes {arg!r}, which has no paragraph in tracin_widgets/influence/_argdocs.py: "
            f"add one to SHARED (or to OWN[{cls_name!r}] when it means something else there)."
        )
    return " ".join(text.split())


def args_section(cls_name: str, params: Sequence[str]) -> str:
    """The ``Args:`` section of ``cls_name`` for its constructor arguments ``params`` (in signature order)."""
    lines = ["Args:"]
    for arg in params:
        lines.append(
            textwrap.fill(
                f"{arg}: {paragraph(cls_name, arg)}",
                width=WIDTH,
                initial_indent="    ",
                subsequent_indent="        ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def build(cls_name: str, doc: str, params: Sequence[str]) -> str:
    """The docstring of ``cls_name``: its own ``doc`` (cleaned, without an ``Args:`` section) with the ``Args:``
    section of ``params`` inserted before its ``Examples:`` section (or appended when it has none)."""
    doc = inspect.cleandoc(doc)
    lines = doc.splitlines()
    if "Args:" in lines:
        raise ValueError(f"{cls_name}'s own docstring has an Args: section: _argdocs builds it, leave it out.")
    section = args_section(cls_name, params)
    at = lines.index("Examples:") if "Examples:" in lines else len(lines)
    head = "\n".join(lines[:at]).rstrip()
    tail = "\n".join(lines[at:])
    return f"{head}\n\n{section}" + (f"\n\n{tail}" if tail else "")


def init_params(cls: type) -> list[str]:
    """The names of ``cls.__init__``'s arguments, in order (no ``self``, no ``*args`` / ``**kwargs``)."""
    sig = inspect.signature(cls)  # the constructor's, without self
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind not in skip]


def document(cls: _T) -> _T:
    """Class decorator: ``cls.__doc__`` becomes its own docstring with its ``Args:`` section built in."""
    own = cls.__dict__.get("__doc__")
    if not own:
        raise ValueError(f"{cls.__name__} needs a docstring of its own (an introduction) for @document.")
    cls.__doc__ = build(cls.__name__, own, init_params(cls))
    return cls
