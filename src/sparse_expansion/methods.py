"""The registry of compression methods, and `compress(model, windows, config)`: the library call
behind `prune`, `expand` and the demo (torchao's `sparsify_(model, Config())`, with a record).

A method is a config dataclass (what the user chooses) plus the engine compressor that carries
it out. The CLI's choices, the demo's rows and the reports all read METHODS, so adding a method
is its config and compressor in its own module plus one row here.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .data import CalibrationSpec
    from .engine import LayerCompressor
    from .prune.dense import DenseQuantConfig


@dataclass(frozen=True)
class CompressionMethod:
    """One registry row. Config and compressor are import paths ("module:Name"), resolved on use,
    so reading the registry (the CLI's --help) does not import torch."""

    name: str
    config_path: str
    compressor_path: str
    kind: str  # what the result is called in its record: "pruned" or "expanded"
    summary: str  # one line for --help and reports

    @property
    def config(self) -> type:
        return _resolve(self.config_path)

    def compressor(self, config: Any) -> LayerCompressor:
        return _resolve(self.compressor_path)(config)


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_PRUNE = "sparse_expansion.prune.compressors"
METHODS: dict[str, CompressionMethod] = {m.name: m for m in (
    CompressionMethod("magnitude", f"{_PRUNE}:MagnitudeConfig", f"{_PRUNE}:PruneCompressor", "pruned",
           "drop the smallest |w| of each matrix; needs no data"),
    CompressionMethod("wanda", f"{_PRUNE}:WandaConfig", f"{_PRUNE}:PruneCompressor", "pruned",
           "drop the smallest |w| x input norm within each row (Sun et al. 2023)"),
    CompressionMethod("sparsegpt", f"{_PRUNE}:SparseGPTConfig", f"{_PRUNE}:PruneCompressor", "pruned",
           "prune column by column, updating the rest to compensate (Frantar & Alistarh 2023)"),
    CompressionMethod("sparse_expansion", "sparse_expansion.expand.compressor:ExpandConfig",
           "sparse_expansion.expand.compressor:ExpandCompressor", "expanded",
           "k SparseGPT experts per linear, one per input cluster, behind a router (Kong et al. 2024)"),
)}

PRUNING_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.kind == "pruned")


def method_of(config: Any) -> CompressionMethod:
    for method in METHODS.values():
        if type(config) is method.config:
            return method
    raise TypeError(f"{type(config).__name__} is not the config of a registered method")


def make_config(name: str, sparsity: Any, **options: Any) -> Any:
    """The config of method `name` from the options it accepts (others are an error)."""
    if name not in METHODS:
        raise UsageError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    config_type = METHODS[name].config
    known = {f.name for f in dataclasses.fields(config_type)}
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - known)
    if extra:
        raise UsageError(f"method {name} takes no option {', '.join(extra)}")
    return config_type(sparsity=sparsity, **given)


def config_json(config: Any) -> dict[str, Any]:
    """The config's fields as JSON values (a Sparsity as 0.5 or "2:4")."""
    return {f.name: (v.to_json() if hasattr(v := getattr(config, f.name), "to_json") else v)
            for f in dataclasses.fields(config)}


def check_widths(config: Any, model: nn.Module, targets: str = "mlp") -> None:
    """Refuse an N:M sparsity whose M does not divide the input width of every target linear
    (`model` may be a skeleton on the meta device: only shapes are read)."""
    from .arch import decoder_layers, in_features, target_groups
    from .moe import expert_linears
    from .prune.sparsity import check_divisible

    groups = target_groups(model, targets)
    with expert_linears(model):  # a mixture of experts: every expert's linears, as compress sees them
        for index, layer in enumerate(decoder_layers(model)):
            for group in groups:
                for name in group:
                    check_divisible(in_features(layer.get_submodule(name)), config.sparsity,
                                    f"layer {index} {name}")


def check_asymmetric(method: str, model: Any) -> None:
    """Asymmetric calibration pairs each token's compressed and dense inputs in SparseGPT's statistics (its own
    or the experts'): refused, in one line, for the methods without them and for a mixture of experts (whose
    routing can send a token to other experts in the two passes)."""
    from .arch import expert_groups

    if method not in ("sparsegpt", "sparse_expansion"):
        raise UsageError(f"--asymmetric works with `prune --method sparsegpt` and `expand` (got {method}): it changes "
                         "the target of SparseGPT's solve")
    if model is not None and expert_groups(model):
        raise UsageError("--asymmetric does not take a mixture of experts: the dense and the compressed pass may "
                         "route a token to different experts")


def compress(model: nn.Module, windows: torch.Tensor | None, config: Any, *, targets: str = "mlp",
             batch_size: int = 8, device: str = "cpu", progress: bool = True,
             dense: DenseQuantConfig | None = None, true_sequential: bool = False,
             asymmetric: bool = False) -> dict[str, Any]:
    """Compress `model` in place, layer by layer, with the method `config` belongs to; with `dense`,
    GPTQ-quantize the linears outside `targets` and the LM head too (prune/dense.py); `true_sequential`:
    each layer's linears in the order they run, each calibrated on the ones compressed before it
    (engine.calibrate); `asymmetric`: SparseGPT / GPTQ solved against the dense model's outputs
    (prune/asymmetric.py).

    Returns the run record: method, settings, achieved sparsity (mean and per linear), per-linear
    facts, FLOPs per token and non-zeros afterwards, and where the time went.
    """
    from .arch import architecture_of, refuse_expansion
    from .engine import calibrate
    from .evaluate import model_costs
    from .moe import expert_linears
    from .prune.dense import DenseQuantConfig, dense_compressor, quantize_head

    method = method_of(config)
    if method.kind == "expanded":
        refuse_expansion(architecture_of(model), model.config.model_type)
    compressor = method.compressor(config)
    if asymmetric:
        check_asymmetric(method.name, model)
        # The linears pruning leaves dense (attention, LM head) take their asymmetric targets too, float without
        # --quantize-dense: solved alone against the dense outputs, the MLP overfits the calibration corpus
        # (SmolLM2 70%: pydoc perplexity 281 -> 37,190, BENCHMARKS.md).
        dense = dense or DenseQuantConfig(None)
    rest = dense_compressor(dense) if dense is not None else None
    if compressor.needs_calibration or rest is not None:
        if windows is None:
            raise ValueError(f"{method.name} needs calibration windows")
        compressor.check_calibration(windows.numel())
    else:
        windows = None  # data-free (magnitude): it must not read, or fail on, a corpus
    check_widths(config, model, targets)
    start = time.perf_counter()
    with expert_linears(model):  # MoE: every expert's linears, pruned like any linear (moe.py)
        compressor.prepare(model, windows, targets=targets, batch_size=batch_size)
        times = calibrate(model, windows, compressor, targets=targets,
                          batch_size=batch_size, device=device, progress=progress, rest=rest,
                          true_sequential=true_sequential, asymmetric=asymmetric)
    seconds = {"capture": times.capture, "forward": times.forward, "compress": times.compress,
               **compressor.timings()}
    quantized: dict[str, Any] = {}
    if dense is not None:
        t0 = time.perf_counter()
        head = quantize_head(model, windows, dense, batch_size=batch_size, device=device,
                            dense_outputs=times.dense_outputs)
        seconds["head"] = time.perf_counter() - t0
        quantized = {"dense_quantization": {**dataclasses.asdict(dense), "linears": rest.record(), "head": head}}
    elapsed = time.perf_counter() - start
    linears = compressor.record()
    achieved = [r["sparsity"] for r in linears.values()]
    return {
        "kind": method.kind,
        "method": method.name,
        **config_json(config),
        "targets": targets,
        "true_sequential": true_sequential or asymmetric,
        "asymmetric": asymmetric,
        "mean_sparsity": sum(achieved) / len(achieved) if achieved else None,
        "linears": linears,
        **quantized,
        "costs": model_costs(model),
        "seconds": {"total": elapsed, **seconds},
    }


def compress_and_save(source: str, config: Any, out: str, calibration: CalibrationSpec, *,
                      targets: str = "mlp", batch_size: int = 8, device: str = "cpu",
                      dtype: torch.dtype | None = None, progress: bool = True,
                      notes: dict[str, Any] | None = None, dense: DenseQuantConfig | None = None,
                      true_sequential: bool = False, asymmetric: bool = False) -> dict[str, Any]:
    """Load `source`, compress it, save it to `out` atomically; returns the saved record (with
    `notes`, e.g. how the user phrased a setting, added to it).

    Everything that can be refused is refused before the model loads: an unwritable or non-empty
    `out`, bad calibration sizes, an N:M sparsity that does not divide the layer widths (read from
    config.json). Under torchrun every rank runs the same deterministic calibration and shares the
    expert solves; rank 0 writes the folder. `dtype` is the weights' storage precision (default
    float32); statistics and solves compute in float32 whatever it is.
    """
    from . import distributed, runtime
    from .artifact import save_artifact
    from .io import atomic_output_dir, check_output_dir
    from .models import check_model_config, load_causal_lm, skeleton

    check_output_dir(out)
    asked = method_of(config).compressor(config)  # what data the method needs, asked before any work
    needs_data = asked.needs_calibration or dense is not None
    if needs_data:
        calibration.check()
        asked.check_calibration(calibration.windows * calibration.seqlen)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    check_model_config(source, expanding=method_of(config).kind == "expanded")
    if config.sparsity.structured and (shape := skeleton(source)) is not None:
        check_widths(config, shape, targets)  # from config.json: N:M against the layer widths
    if asymmetric:
        check_asymmetric(method_of(config).name, skeleton(source))
    runtime.join_process_group(device)
    model, tokenizer = load_causal_lm(source, dtype=dtype) if dtype is not None else load_causal_lm(source)
    windows = calibration.sample(tokenizer, model) if needs_data else None
    record = compress(model, windows, config, targets=targets, batch_size=batch_size, device=device,
                      progress=progress and distributed.is_main(), dense=dense, true_sequential=true_sequential,
                      asymmetric=asymmetric)
    record.update(source_model=source, calibration=calibration.to_json() if needs_data else None,
                  dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                  machine={**machine_record(), "ranks": distributed.rank_and_size()[1]}, **(notes or {}))
    if distributed.is_main():
        with atomic_output_dir(out) as tmp:
            save_artifact(tmp, model, tokenizer=tokenizer, record=record)
    return record


def machine_record() -> dict[str, Any]:
    import platform

    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
