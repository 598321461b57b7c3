"""Resolving layers by name and finding the model's final linear layer."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ._batch import pick_output
from ._model import eval_mode, inner_module, model_lock, wrapper_depth


def module_name(model: nn.Module, module: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def resolve_module(model: nn.Module, layer: Any, argname: str) -> tuple[str, nn.Module]:
    """A module of ``model`` given by dotted name or by reference.

    For a model wrapped in ``nn.DataParallel`` / ``DistributedDataParallel`` the module is looked up in the
    wrapped module and its name is returned without the wrapper's ``module.`` prefix; the name may be given
    with or without that prefix.
    """
    depth = wrapper_depth(model)
    model = inner_module(model)
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(layer, str):
        mods = dict(model.named_modules())
        name = layer
        for _ in range(depth):
            if name not in mods and name.startswith("module."):
                name = name[len("module.") :]
        if name in mods and name:
            return name, mods[name]
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"{argname}: the model has no layer named {layer!r}.{hint} Layer names: {names[:20]}"
            f"{' …' if len(names) > 20 else ''}."
        )
    if isinstance(layer, nn.Module):
        found = module_name(model, layer)
        if found is None or found == "":
            raise ValueError(
                f"{argname}: the module {type(layer).__name__} is not a submodule of the model. Pass one of "
                f"the model's own layers (e.g. model.fc) or its name; layer names: {names[:20]}."
            )
        return found, layer
    raise TypeError(f"{argname} must be a layer name (str) or an nn.Module of the model, not {type(layer).__name__}.")


def trace_output_module(model: nn.Module, call: Callable[[], Any]) -> tuple[list[tuple[str, nn.Module]], Any]:
    """Run ``call()`` with hooks; return the modules whose output *is* the model output, innermost last."""
    records: list[tuple[str, nn.Module, Any]] = []
    handles = []
    for name, m in model.named_modules():
        if name == "":
            continue
        handles.append(m.register_forward_hook(lambda mod, i, o, _n=name: records.append((_n, mod, o))))
    try:
        out = call()
    finally:
        for h in handles:
            h.remove()
    producers = [(n, m) for n, m, o in records if o is out]
    return producers, records


def find_final_linear_layer(model: nn.Module, example_inputs: Any) -> tuple[str, nn.Module]:
    """The ``nn.Linear`` that produces the model's output, found by tracing one forward pass.

    ``example_inputs`` is a tensor, a tuple of model arguments (a batch without its labels) or a dict of keyword
    arguments (``model(**example_inputs)``; a ``ModelOutput`` or mapping output is read at its ``logits``).
    Raises ValueError when the output is not produced by an ``nn.Linear``.
    """
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        args, kwargs = (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)), {}
    with model_lock(model), eval_mode(model), torch.no_grad():
        producers, records = trace_output_module(model, lambda: pick_output(model(*args, **kwargs), None, "inputs"))
    linear = [(n, m) for n, m in producers if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    called = [(n, m) for n, m, _ in records if isinstance(m, nn.Linear)]
    hint = f" The last nn.Linear called is {called[-1][0]!r}." if called else ""
    raise ValueError(
        "could not find the final linear layer: the model's output is not produced by an nn.Linear "
        f"module.{hint} Pass final_fc_layer=<name of the last fully-connected layer> explicitly."
    )
