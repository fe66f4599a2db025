"""The layer-sequential calibration engine: the one place where calibration happens.

As in SparseGPT: capture the hidden states entering decoder layer 0, then for each layer in
order run it on the calibration batches with hooks that hand each target linear's inputs to the
compressor, let the compressor produce replacements, write them in, and run the layer again so
the next layer calibrates on the outputs of the already-compressed one. Only the current layer's
activations are held; on `cuda` only the current layer sits on the GPU.

A compressor implements `LayerCompressor`: it sees one layer's target linears, grouped by shared
input, observes their inputs batch by batch, and returns for each linear either a new weight
([out, in], same shape) or a whole replacement module.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .arch import decoder_layers, layer_kinds, set_linear_weight, target_groups
from .progress import progress_bar
from .surgery import StopForward, flat_inputs, hooks, layer_site, replace

Groups = tuple[tuple[str, ...], ...]


class LayerCompressor(ABC):
    """One compression method acting on one decoder layer at a time."""

    #: False for data-free methods (magnitude): the engine then skips every forward pass.
    needs_calibration: bool = True

    def check_calibration(self, tokens: int) -> None:
        """Refuse (UsageError), before any work, `tokens` calibration tokens per layer that are too
        few for the method; any number will do unless the method says otherwise."""
        return None

    def prepare(self, model: nn.Module, windows: torch.Tensor | None, *, targets: str = "mlp",
                batch_size: int = 8) -> None:
        """Whole-model planning before the layer-sequential pass (non-uniform sparsity); none by default."""
        return None

    @abstractmethod
    def start_layer(self, index: int, layer: nn.Module, groups: Groups) -> None:
        """Prepare state for the layer's target linears; `groups` lists linears sharing an input."""

    @abstractmethod
    def observe(self, group: tuple[str, ...], inputs: torch.Tensor) -> None:
        """One batch of the inputs [tokens, in_features] shared by the linears of `group` (under asymmetric
        calibration also `reference=`, the dense model's inputs for the same tokens; see calibrate)."""

    @abstractmethod
    def finish_layer(self) -> dict[str, torch.Tensor | nn.Module]:
        """Replacements for the layer's linears (new [out, in] weights or modules); frees state."""

    def finish_groups(self, groups: Groups) -> dict[str, torch.Tensor | nn.Module]:
        """Replacements for the linears of `groups` alone, once their inputs are observed: the engine's
        true-sequential mode then observes the later groups on these ones' outputs. `finish_layer`
        afterwards returns what is left. A compressor that solves a layer in one piece keeps this refusal."""
        raise NotImplementedError(f"{type(self).__name__} cannot compress a layer group by group")

    def record(self) -> dict[str, Any]:
        """Per-linear facts for the run record (sparsity achieved, damping, cluster sizes, ...)."""
        return {}

    def timings(self) -> dict[str, float]:
        """Seconds spent in the method's own steps (allocation, clustering, ...) for the run record."""
        return {}


@dataclass
class EngineRun:
    """Where a calibration's time went, in seconds, and (asymmetric only) the dense model's hidden states
    after the last decoder layer, one tensor per batch: what the LM head's own solve aims at."""

    capture: float = 0.0
    forward: float = 0.0
    compress: float = 0.0
    dense_outputs: list[torch.Tensor] | None = None


@dataclass
class LayerInputs:
    """The hidden states entering the current layer, one tensor per batch, plus the keyword
    arguments the model passed to its layers (masks, rotary embeddings), captured once: `kwargs`
    those of layer 0, `by_kind` those of the first layer of each attention kind (`arch.layer_kinds`:
    Gemma's global layers get another mask and rotary table than its sliding-window ones)."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    by_kind: dict[str, list[dict[str, Any]]] | None = None
    kinds: tuple[str, ...] = ()

    def kwargs_for(self, index: int) -> list[dict[str, Any]]:
        """The keyword arguments, one dict per batch, that layer `index` gets from the model."""
        if not self.by_kind or not self.kinds:
            return self.kwargs
        return self.by_kind[self.kinds[index]]


def _move_except_layers(model: nn.Module, layers: nn.ModuleList, device: str) -> None:
    """Put every module but the decoder layers on `device` (embeddings, rotary, norms, head)."""
    def visit(module: nn.Module) -> None:
        for child in module.children():
            if child is layers:
                continue
            if any(sub is layers for sub in child.modules()):
                visit(child)
            else:
                child.to(device)
        for _name, param in module.named_parameters(recurse=False):
            param.data = param.data.to(device)
        for name, buf in module.named_buffers(recurse=False):
            setattr(module, name, buf.to(device))
    visit(model)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int,
                         device: str = "cpu") -> LayerInputs:
    """Run the model up to decoder layer 0 on each batch of windows and keep what enters it, and
    the keyword arguments of the first layer of every other attention kind (the forward then runs
    on to that layer, and no further)."""
    layers = decoder_layers(model)
    kinds = layer_kinds(model)
    firsts = {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}  # kind -> its first layer
    last = max(firsts.values())
    _move_except_layers(model, layers, device)
    hidden: list[torch.Tensor] = []
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in firsts}

    def grab(index: int, kind: str):
        def hook(_module, args, kw):
            kw = dict(kw)
            states = args[0] if args else kw.pop("hidden_states")
            if index == 0:
                hidden.append(states.detach())
            by_kind[kind].append({k: v for k, v in kw.items() if k != "hidden_states"})
            if index == last:
                raise StopForward
        return hook

    try:
        with hooks(model, before={layer_site(model, index): grab(index, kind) for kind, index in firsts.items()}):
            for start in range(0, windows.shape[0], batch_size):
                with contextlib.suppress(StopForward):
                    model(windows[start : start + batch_size].to(device), use_cache=False)
    finally:
        if device != "cpu":
            _move_except_layers(model, layers, "cpu")
    return LayerInputs(hidden, by_kind[kinds[0]], by_kind, kinds)


def run_layer(layer: nn.Module, states: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(states, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def input_hooks(layer: nn.Module, sinks: dict[tuple[str, ...], Any]) -> contextlib.AbstractContextManager[None]:
    """Hooks on the first linear of each group that pass (group, its 2-D input) to the group's sink."""
    return hooks(layer, {group[0]: flat_inputs(functools.partial(sink, group)) for group, sink in sinks.items()})


@torch.no_grad()
def capture_head_inputs(model: nn.Module, windows: torch.Tensor, sink, batch_size: int = 8,
                        device: str = "cpu", last_outputs: list[torch.Tensor] | None = None) -> None:
    """Run the (already compressed) model on each batch of windows and hand what enters its LM head,
    2-D [tokens, hidden], to `sink`; the head itself never runs (its input is all the head's GPTQ needs,
    and the final norm, whatever the architecture calls it, has run by then). `last_outputs` (one tensor
    per batch, calibrate's batches): what the last decoder layer returns instead of its own output, so
    the sink gets the head's inputs for those hidden states (the dense model's: EngineRun.dense_outputs)."""
    head = model.get_output_embeddings()
    site = next(name for name, module in model.named_modules() if module is head)
    batches = iter(last_outputs or ())

    def grab(_module, args, kw):
        x = args[0] if args else next(iter(kw.values()))
        sink(x.reshape(-1, x.shape[-1]).detach())
        raise StopForward

    def swap(_module, _args, out):
        states = next(batches).to(device)
        if isinstance(out, tuple):
            return (states.to(out[0].dtype), *out[1:])
        return states.to(out.dtype)

    replace_last = {layer_site(model, len(decoder_layers(model)) - 1): swap} if last_outputs is not None else {}
    model.to(device)
    try:
        with hooks(model, replace_last, before={site: grab}):
            for start in range(0, windows.shape[0], batch_size):
                with contextlib.suppress(StopForward):
                    model(windows[start : start + batch_size].to(device), use_cache=False)
    finally:
        if device != "cpu":
            model.to("cpu")


def apply_replacements(layer: nn.Module, replacements: dict[str, torch.Tensor | nn.Module]) -> None:
    """Write new weights in place, or swap in replacement modules."""
    for name, new in replacements.items():
        if isinstance(new, nn.Module):
            replace(layer, name, new)
        else:
            set_linear_weight(layer.get_submodule(name), new)


@torch.no_grad()
def calibrate(
    model: nn.Module,
    windows: torch.Tensor | None,
    compressor: LayerCompressor,
    *,
    targets: str = "mlp",
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    rest: LayerCompressor | None = None,
    true_sequential: bool = False,
    asymmetric: bool = False,
) -> EngineRun:
    """Compress every decoder layer of `model` in place, layer by layer. Returns timings (and, asymmetric,
    the dense model's last hidden states).

    `rest`, when given, compresses the linears outside `targets` (the attention projections when
    targets is 'mlp') in the same pass, on the same inputs: GPTQ of what pruning leaves dense.
    `true_sequential` (GPTQ's option of that name) compresses a layer's groups one at a time in the order
    they run, each observed on the outputs of the groups compressed before it (down_proj on the pruned
    gate and up, not the dense ones), so each group is solved on the inputs it will see; it costs one
    forward pass of the layer, cut short after the group's input, per group.
    `asymmetric` also carries the dense model's hidden states through an uncompressed copy of each layer
    and hands every compressor, beside each batch of inputs, the dense model's inputs for the same tokens
    (`observe(..., reference=)`): a solve can then aim at the dense model's outputs rather than at the
    compressed inputs' own (prune/asymmetric.py). Every compressor must take them. It implies
    `true_sequential`: a correction fit on inputs the linear will not see (down_proj's through the dense gate
    and up) does more harm than good (a build without it broke SparseGPT 70% on SmolLM2 down completely)."""
    model.eval()
    groups = target_groups(model, targets)
    rest_groups = tuple(g for g in target_groups(model, "all") if g not in groups) if rest is not None else ()
    layers = decoder_layers(model)
    times = EngineRun()
    inputs = None
    if compressor.needs_calibration or rest is not None:
        if windows is None:
            raise ValueError(f"{type(compressor).__name__} needs calibration windows")
        t0 = time.perf_counter()
        inputs = capture_layer_inputs(model, windows, batch_size, device)
        times.capture = time.perf_counter() - t0
    reference = list(inputs.hidden) if asymmetric and inputs is not None else None  # the dense model's stream
    true_sequential = true_sequential or asymmetric

    bar = progress_bar(range(len(layers)), desc="layers", unit="layer", disable=not progress)
    for index in bar:
        layer = layers[index].to(device)
        original = copy.deepcopy(layer) if reference is not None else None
        compressor.start_layer(index, layer, groups)
        if rest is not None:
            rest.start_layer(index, layer, rest_groups)
        owners = {group: compressor for group in groups}
        owners.update({group: rest for group in rest_groups} if rest is not None else {})
        stages = [(g,) for g in target_groups(model, "all") if g in owners] if true_sequential else [tuple(owners)]
        for stage in stages:  # one stage: every group on the layer's inputs; true-sequential: a group a stage
            sinks = {group: owners[group].observe for group in stage if owners[group].needs_calibration}
            if inputs is not None and sinks:
                t0 = time.perf_counter()
                _observe(layer, sinks, inputs, index, stop=stage[0][0] if true_sequential else None,
                         original=original, reference=reference)
                times.forward += time.perf_counter() - t0
            if true_sequential:
                t0 = time.perf_counter()
                apply_replacements(layer, owners[stage[0]].finish_groups(stage))
                times.compress += time.perf_counter() - t0

        t0 = time.perf_counter()
        apply_replacements(layer, compressor.finish_layer())
        if rest is not None:
            apply_replacements(layer, rest.finish_layer())
        times.compress += time.perf_counter() - t0

        last = index + 1 == len(layers)
        if inputs is not None and (not last or reference is not None):  # the dense stream also leaves the last layer
            t0 = time.perf_counter()
            kwargs = inputs.kwargs_for(index)
            if not last:
                inputs.hidden = [run_layer(layer, s, kw) for s, kw in zip(inputs.hidden, kwargs)]
            if reference is not None:
                reference = [run_layer(original, s, kw) for s, kw in zip(reference, kwargs)]
            times.forward += time.perf_counter() - t0
        if device != "cpu":
            layer.to("cpu")
    times.dense_outputs = reference
    return times


def _observe(layer: nn.Module, sinks: dict[tuple[str, ...], Any], inputs: LayerInputs, index: int, *,
             stop: str | None = None, original: nn.Module | None = None,
             reference: list[torch.Tensor] | None = None) -> None:
    """Run `layer` on every batch with each group's inputs handed to its sink, the pass cut short after
    linear `stop` when given. With `original` (asymmetric), each batch first runs through the uncompressed
    copy on the dense model's hidden states, and a sink gets that pass's inputs of its group as `reference`."""
    for batch, (states, kw) in enumerate(zip(inputs.hidden, inputs.kwargs_for(index))):
        bound = sinks
        if original is not None:
            dense: dict[tuple[str, ...], torch.Tensor] = {}
            _run_cut(original, reference[batch], kw, {g: dense.__setitem__ for g in sinks}, stop)
            bound = {g: functools.partial(_paired, sink, dense) for g, sink in sinks.items()}
        _run_cut(layer, states, kw, bound, stop)


def _paired(sink, dense: dict[tuple[str, ...], torch.Tensor], group: tuple[str, ...], x: torch.Tensor) -> None:
    if group not in dense or dense[group].shape != x.shape:
        raise RuntimeError(f"{group[0]}: the dense model's pass gave no inputs for the same tokens")
    sink(group, x, reference=dense.pop(group))


def _run_cut(layer: nn.Module, states: torch.Tensor, kw: dict[str, Any], sinks: dict[tuple[str, ...], Any],
             stop: str | None) -> None:
    with input_hooks(layer, sinks), hooks(layer, stop_after=stop), contextlib.suppress(StopForward):
        run_layer(layer, states, kw)
