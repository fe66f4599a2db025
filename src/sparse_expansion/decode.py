"""Token generation, timed: the fast C++ decode step where the model and device allow it, else
Hugging Face `generate`.

**The fast step** (kernels/csrc/decode_step.cpp) runs one whole decode step of a Llama-shaped
decoder in one call per token: RMSNorm, rotary, GQA attention over a preallocated KV cache (sliding
windows per layer), gated MLP, residuals, final norm and LM head, plus what each family adds
(`LAYOUTS`: Qwen 3's q/k norms; Gemma's (1 + w) norms, scaled embedding, GELU-tanh, sandwich norms,
per-kind rotary tables and soft caps; Granite's multipliers), with every linear a loaded model can
hold: dense float32 or bfloat16 (nn.Linear, kernels.DecodeLinear),
kernels.CompressedLinear (bitmask, N:M) and expanded SparseExpertLinear (the router picks the
expert once per token; gate and up share it), and int8 / int4 values in any of them or in
kernels.QuantizedLinear. Quantized dense and bitmask weights (groups of 32, a multiple of 64 or the
whole row) run the "act8" arithmetic of csrc/quant.h: the input rounded to int8 in blocks of 32 and
dotted with the codes in integers (AVX-512 VNNI), so their outputs differ from the de-quantized
forward pass by that rounding (bounded per linear in tests/test_kernels_quant.py); N:M and other
group sizes run the exact de-quantized arithmetic. `FastDecoder` builds it from a loaded model, sharing
the model's weight tensors (norm weights and bfloat16 biases are copied to float32; they are
small). The prompt goes through the model's own forward pass (its KV cache is copied into the
step's), the decode loop through the step. Threads: `torch.set_num_threads` (one OpenMP region per
step, rows of every linear split over the threads).

`torch.compile` was not used: on a 2-core CPU its compile time (minutes for a 30-layer model) and
the graph breaks of the Hugging Face decoder and our custom kernels left it far from one call per
token.

**Which path runs** (`choose_path`): "fast" when the kernels are built (not
`SPARSE_EXPANSION_KERNELS=torch`), the model is on the CPU, its family and every module are ones
the step knows, and its rotary type is static; otherwise "hf" with a one-line reason.
`generate(..., path="hf")` forces Hugging Face `generate`; both paths give the same tokens for a
float32 model (tests/test_decode.py) up to float rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .arch import architecture_of, decoder_layers, supported_model_types

PATHS = ("auto", "fast", "hf")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # static: one cos/sin table serves every position


@dataclass(frozen=True)
class Layout:
    """What a family computes between its linears beyond Llama's, as the step needs to be told.
    Everything else is read from the model itself: the attention scale (`self_attn.scaling`:
    Gemma's query_pre_attn_scalar, Granite's attention_multiplier), each layer's sliding window,
    the rotary tables (one per layer kind), the embedding's own scale (Gemma's sqrt(hidden), in the
    model's dtype), the MLP's activation module, the config's soft caps."""

    norm_offset: float = 0.0  # RMSNorm multiplies by offset + weight (Gemma: 1 + w)
    sandwich_norms: bool = False  # Gemma 2/3: norms on the attention and MLP outputs, pre/post feed-forward
    qk_norms: bool = False  # Qwen 3, Gemma 3: per-head RMSNorm of queries and keys before rotary
    window_in_config: bool = False  # Mistral: config.sliding_window for every layer (no per-layer attribute)
    multipliers: bool = False  # Granite: embedding, residual and logits multipliers from the config
    # Soft caps (cap * tanh(x / cap)) the family's forward applies when its config sets them: to the
    # attention scores (attn_logit_softcapping) and the logits (final_logit_softcapping). A cap the
    # config sets but the forward ignores (transformers 5: Gemma 3's attention, the multimodal Gemma
    # 3's head) is refused by `check_model` rather than guessed either way.
    attn_softcap: bool = False
    final_softcap: bool = False


_GEMMA = dict(norm_offset=1.0, sandwich_norms=True)
# Keyed by model types of arch.ARCHITECTURES' rows (tests/test_decode.py checks every key is one);
# a type of the table that is not here decodes through Hugging Face, and --json says so.
LAYOUTS: dict[str, Layout] = {
    "llama": Layout(), "mistral": Layout(window_in_config=True), "qwen2": Layout(), "qwen3": Layout(qk_norms=True),
    "gemma": Layout(norm_offset=1.0), "gemma2": Layout(**_GEMMA, attn_softcap=True, final_softcap=True),
    "gemma3_text": Layout(**_GEMMA, qk_norms=True, final_softcap=True),
    "gemma3": Layout(**_GEMMA, qk_norms=True),  # the multimodal model's text decoder
    "granite": Layout(multipliers=True),
}
MODEL_TYPES = tuple(t for t in supported_model_types() if t in LAYOUTS)  # the table's order
# The MLP activation modules the step computes, by class (what the model's forward calls) -> the
# Activation enum of decode_step.cpp (0 SiLU, 1 GELU-tanh, 2 GELU with erf).
ACTIVATIONS = {"SiLUActivation": 0, "SiLU": 0, "GELUTanh": 1, "NewGELUActivation": 1, "GELUActivation": 2}


class Unsupported(Exception):
    """The fast step cannot run this model here; the message says why in one line."""


# --- timing ------------------------------------------------------------------------------------

class StepTimer:
    """A generate() streamer that only notes when each batch of tokens arrives: first the prompt,
    then one call per new token. Wall and process CPU time, so prefill splits from decode."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def put(self, _value) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def end(self) -> None:
        pass


def _result(new_ids: torch.Tensor, prompt_tokens: int, start: tuple[float, float], first: tuple[float, float],
            stop: tuple[float, float]) -> dict:
    """Prefill (the prompt's forward pass and the first token) apart from decode (every later token)."""
    decoded = max(new_ids.numel() - 1, 0)
    decode_wall, decode_cpu = stop[0] - first[0], stop[1] - first[1]
    return {"new_ids": new_ids, "prompt_tokens": prompt_tokens, "new_tokens": new_ids.numel(),
            "prefill_seconds": first[0] - start[0], "prefill_cpu_seconds": first[1] - start[1],
            "decode_seconds": decode_wall, "decode_cpu_seconds": decode_cpu,
            "decode_tokens_per_second": decoded / decode_wall if decoded and decode_wall > 0 else None,
            "decode_tokens_per_cpu_second": decoded / decode_cpu if decoded and decode_cpu > 0 else None}


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def timed_generate(model, ids, max_new_tokens: int, *, pad_token_id: int | None = None, temperature: float = 0.0,
                   ignore_eos: bool = False) -> dict:
    """KV-cached generation of a [1, prompt] batch through Hugging Face `generate` (greedy, or sampled
    above temperature 0), timed: the new token ids, and prefill apart from decode, in wall and
    process CPU seconds."""
    sample = temperature > 0
    timer = StepTimer()
    start = _now()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens if ignore_eos else None,
                             do_sample=sample, temperature=temperature if sample else None, top_p=None, top_k=None,
                             pad_token_id=pad_token_id, streamer=timer)
    stop = _now()
    steps = timer.stamps[1:]  # stamps[0]: the prompt, handed over before any forward pass
    return {**_result(out[0, ids.shape[1]:], ids.shape[1], start, steps[0] if steps else stop, stop),
            "decode_path": "hf"}


# --- the fast step -----------------------------------------------------------------------------

def _kernels() -> tuple[object, int]:
    from .kernels import ops

    lib, isa = ops._library()
    if lib is None:
        raise Unsupported("the C++ kernels are not available (SPARSE_EXPANSION_KERNELS=torch or no build)")
    if not hasattr(lib, "DecodeStep"):
        raise Unsupported("the built kernels predate the decode step; rebuild them")
    return lib, lib.isa_level(isa)


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _text_model(model: nn.Module) -> nn.Module:
    """The module holding the decoder layers, the final norm and the rotary embedding."""
    path = architecture_of(model).layers.rsplit(".", 1)[0]
    return model.get_submodule(path)


def _activation(model: nn.Module) -> int:
    act = getattr(decoder_layers(model)[0].mlp, "act_fn", None)
    name = type(act).__name__
    if name not in ACTIVATIONS:
        raise Unsupported(f"MLP activation {name}; the fast step runs SiLU, GELU and GELU-tanh")
    return ACTIVATIONS[name]


def check_model(model: nn.Module) -> None:
    """Raise Unsupported unless the fast step can run `model` exactly as its forward pass does."""
    model_type = model.config.model_type
    if model_type not in LAYOUTS:
        raise Unsupported(f"model type {model_type!r} is not one the fast step runs ({', '.join(MODEL_TYPES)})")
    config = _text_config(model)
    if getattr(config, "use_bidirectional_attention", False):
        raise Unsupported("bidirectional attention (use_bidirectional_attention); the fast step is causal")
    layout = LAYOUTS[model_type]
    for key, applied in (("attn_logit_softcapping", layout.attn_softcap),
                         ("final_logit_softcapping", layout.final_softcap)):
        if getattr(config, key, None) and not applied:
            raise Unsupported(f"{key}={getattr(config, key)} in the config, which the {model_type} forward "
                              "does not apply here; the fast step will not guess")
    _activation(model)
    rotary = getattr(_text_model(model), "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    for kind in (rope_type.values() if isinstance(rope_type, dict) else (rope_type,)):
        if kind not in ROPE_TYPES:
            raise Unsupported(f"rotary type {kind!r}; the fast step runs {', '.join(ROPE_TYPES)}")
    if model.dtype not in (torch.float32, torch.bfloat16):
        raise Unsupported(f"dtype {model.dtype}; the fast step runs float32 and bfloat16")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise Unsupported("the model is not on the CPU")
    hooked = next((name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks), None)
    if hooked is not None:
        raise Unsupported(f"{hooked or 'the model'} has forward hooks, which the fast step would skip")


@dataclass
class _Built:
    step: object
    k_cache: torch.Tensor
    v_cache: torch.Tensor


class FastDecoder:
    """The C++ decode step for one model and a cache of `max_len` positions.

    `prefill(ids)` runs the prompt through the model's forward pass and copies its KV cache in;
    `step(token, pos)` runs one token at position pos and returns the logits (float32 [vocab], a
    tensor the next call overwrites). `layers` keeps only the first decoder layers, for timing
    parts of a step: 0 leaves the embedding, the final norm and the LM head (what a 262k-entry head
    costs alone); such a step is not the model's, and `prefill` refuses it."""

    def __init__(self, model: nn.Module, max_len: int, layers: int | None = None) -> None:
        check_model(model)
        lib, level = _kernels()
        self.model, self.max_len, self.complete = model, max_len, layers is None
        self._built = self._build(lib, level, model, max_len, layers)

    @staticmethod
    def _build(lib, level: int, model: nn.Module, max_len: int, keep: int | None) -> _Built:
        layout, config, text = LAYOUTS[model.config.model_type], _text_config(model), _text_model(model)
        every = decoder_layers(model)
        layers = every[:keep]
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        norm = _Norms(layout.norm_offset)
        first = every[0].self_attn
        step = lib.DecodeStep(config.hidden_size, heads, kv_heads, head_dim, len(layers),
                              norm.eps_of(every[0].input_layernorm), float(first.scaling),
                              model.dtype == torch.bfloat16, level)
        embed = model.get_input_embeddings()
        scale = embed.embed_scale.to(embed.weight.dtype) if hasattr(embed, "embed_scale") else 1.0
        multiply = layout.multipliers
        final_cap = getattr(config, "final_logit_softcapping", None) if layout.final_softcap else None
        attn_cap = getattr(config, "attn_logit_softcapping", None) if layout.attn_softcap else None
        step.set_layout(embed_scale=float(scale) * (config.embedding_multiplier if multiply else 1.0),
                        residual_scale=config.residual_multiplier if multiply else 1.0,
                        logit_scale=config.logits_scaling if multiply else 1.0,
                        final_softcap=final_cap or 0.0, attn_softcap=attn_cap or 0.0, activation=_activation(model))
        cos, sin, table_of = _rotary_tables(text, config, len(every), max_len)
        routers: dict[int, int] = {}
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            if float(attn.scaling) != float(first.scaling):
                raise Unsupported(f"layer {i} scales its attention scores differently from layer 0")
            window = (getattr(config, "sliding_window", None) if layout.window_in_config
                      else getattr(attn, "sliding_window", None))
            ids = [_add_linear(step, getattr(parent, name), f"layers.{i}.{name}", routers)
                   for parent, name in ((attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"),
                                        (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj"))]
            if layout.sandwich_norms:  # Gemma names: post_attention_layernorm norms the attention output
                before_mlp = layer.pre_feedforward_layernorm
                extra = dict(attn_out_norm=norm(layer.post_attention_layernorm),
                             mlp_out_norm=norm(layer.post_feedforward_layernorm))
            else:
                before_mlp, extra = layer.post_attention_layernorm, {}
            if layout.qk_norms:
                extra.update(q_norm=norm(attn.q_norm), k_norm=norm(attn.k_norm))
            step.set_layer(i, norm(layer.input_layernorm), norm(before_mlp), ids, window=int(window or 0),
                           rope=table_of[i], **extra)
        head = _add_linear(step, model.get_output_embeddings(), "lm_head", routers)
        k_cache = torch.zeros(len(layers), kv_heads, max_len, head_dim)
        v_cache = torch.zeros_like(k_cache)
        step.set_model(embed.weight.detach(), norm(text.norm), head, cos, sin, k_cache, v_cache)
        return _Built(step, k_cache, v_cache)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's forward pass over a [1, n] prompt; its keys and values fill the cache's first n
        positions. Returns the last position's logits (float32 [vocab])."""
        n = ids.shape[1]
        if not self.complete:
            raise ValueError("this step keeps only some of the model's layers (timing); prefill needs all")
        if n > self.max_len:
            raise ValueError(f"a {n}-token prompt does not fit a cache of {self.max_len}")
        with torch.no_grad():
            out = self.model(ids, use_cache=True, logits_to_keep=1)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        for i, layer in enumerate(cache.layers):  # a sliding-window layer keeps only its last positions
            kept = layer.keys.shape[2]
            self._built.k_cache[i, :, n - kept:n].copy_(layer.keys[0])
            self._built.v_cache[i, :, n - kept:n].copy_(layer.values[0])
        return out.logits[0, -1].float()

    def step(self, token: int, pos: int) -> torch.Tensor:
        return self._built.step.step(token, pos)

    def partial(self, repeats: int, without_linears: bool, pos: int = 0) -> None:
        """Repeat only the linears of the last step (on its inputs and routes), or everything but them
        at position pos: what benchmarks/decode/decode_speed.py times to split a step's cost."""
        self._built.step.partial(repeats, without_linears, pos)

    def profile(self, on: bool | None = None) -> tuple[int, float, float, float]:
        """(steps, CPU seconds in them, of those in the weight kernels, of those in attention) since
        profiling was switched on with `profile(True)`: the CPU clock of the calling thread (thread 0
        of the team; with more threads, its waits at the barriers after each phase count to the phase)."""
        if on is not None:
            self._built.step.set_profile(on)
        return self._built.step.profile()

    def phase_profile(self) -> dict[str, list[dict[str, float]]]:
        """Since `profile(True)`: for each phase of a step (q/k/v, attention, o, gate/up, down, lm head, ...;
        each ends at a barrier) and each thread of the team, wall seconds computing it ("work") and
        waiting at its barrier for the other threads ("wait", the imbalance). Phases a model does not
        have (Gemma's output norms in a Llama) are left out."""
        names = self._built.step.phase_names()
        per_thread = self._built.step.phase_profile()
        out = {}
        for i, name in enumerate(names):
            rows = [{"work": p[i], "wait": p[len(names) + i]} for p in per_thread]
            if any(r["work"] or r["wait"] for r in rows):
                out[name] = rows
        return out


class _Norms:
    """RMSNorm weights as the factor the model multiplies by (offset + weight, float32), all with
    the one epsilon the step uses."""

    def __init__(self, offset: float) -> None:
        self.offset, self.eps = offset, None

    @staticmethod
    def eps_of(module: nn.Module) -> float:
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        if not type(module).__name__.endswith("RMSNorm") or eps is None:
            raise Unsupported(f"a {type(module).__name__} where the fast step expects an RMSNorm")
        return float(eps)

    def __call__(self, module: nn.Module) -> torch.Tensor:
        eps = self.eps_of(module)
        if self.eps is None:
            self.eps = eps
        elif eps != self.eps:
            raise Unsupported(f"RMSNorms with different epsilons ({self.eps}, {eps})")
        return (self.offset + module.weight.detach().float()).contiguous()


def _rotary_tables(text: nn.Module, config, layers: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """cos, sin [kinds, max_len, head_dim] from the model's own rotary module (its scaling included)
    and each layer's table: one per layer kind where the module keeps one per kind (Gemma 3's local
    and global bases), else one for all."""
    rotary = text.rotary_emb
    positions, x = torch.arange(max_len).unsqueeze(0), torch.zeros(1)
    with torch.no_grad():
        if isinstance(getattr(rotary, "rope_type", None), dict):
            kinds = list(config.layer_types)
            names = sorted(set(kinds))
            tables = [rotary(x, positions, name) for name in names]
            table_of = [names.index(kind) for kind in kinds]
        else:
            tables, table_of = [rotary(x, positions)], [0] * layers
    cos = torch.stack([c[0].float() for c, _ in tables]).contiguous()
    sin = torch.stack([s[0].float() for _, s in tables]).contiguous()
    return cos, sin, table_of


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = module.bias
    return None if bias is None else bias.detach().float().contiguous()


def _add_linear(step, module: nn.Module, name: str, routers: dict[int, int]) -> int:
    """Describe one linear to the step (sharing its tensors); raise Unsupported for a kind it lacks."""
    from .expand.module import SparseExpertLinear
    from .kernels import CompressedLinear, DecodeLinear, QuantizedLinear

    if isinstance(module, SparseExpertLinear):  # the compressed experts, even when a dense copy is also held
        router = _add_router(step, module.router, routers)
        experts = module.experts
        return _add_compressed(step, experts.compressed(), _bias(experts), router, experts.num_experts)
    if isinstance(module, CompressedLinear):
        return _add_compressed(step, module.compressed(), _bias(module), -1, 1)
    if type(module) in (nn.Linear, DecodeLinear):
        weight = module.weight.detach()
        if weight.dtype not in (torch.float32, torch.bfloat16):
            raise Unsupported(f"{name} holds {weight.dtype} weights; the fast step runs float32 and bfloat16")
        return step.add_dense(weight.contiguous(), _bias(module), -1)
    if isinstance(module, QuantizedLinear):  # a dense int8 / int4 linear (attention projections, LM head)
        return _add_quant(step, module.compressed(), _bias(module), -1)
    raise Unsupported(f"{name} is a {type(module).__name__}, which the fast step does not run")


def _add_quant(step, weight, bias: torch.Tensor | None, router: int) -> int:
    from .kernels import ops

    if ops.act8_applies(weight):
        weight = weight.act8_form  # N:M codes run as the bitmask they stand for (act8 kernels)
    return step.add_quant(weight.format, *ops._quant_args(weight), bias, router)


def _add_compressed(step, weight, bias: torch.Tensor | None, router: int, experts: int) -> int:
    if weight.quantized:
        return _add_quant(step, weight, bias, router)
    if weight.row_offsets is not None:
        return step.add_bitmask(weight.values, weight.index, weight.row_offsets, experts, weight.in_features, bias,
                                router)
    n, m = weight.n_m
    return step.add_nm(weight.values, weight.index, n, m, experts, weight.in_features, bias, router)


def _add_router(step, router: nn.Module, routers: dict[int, int]) -> int:
    """A router once per object: linears built with the same one (gate and up) route once per token."""
    from .hub.modeling_sparse_expansion import fold_router

    if id(router) not in routers:
        mean, components, centroids = (t.detach().float().contiguous()
                                       for t in (router.mean, router.components, router.centroids))
        if router.folds:  # the same fold the module routes with, so both pick the same expert
            bias, matrix = fold_router(mean, components, centroids)
            routers[id(router)] = step.add_router_folded(bias.contiguous(), matrix.contiguous())
        else:
            routers[id(router)] = step.add_router(mean, components, centroids)
    return routers[id(router)]


# --- generation --------------------------------------------------------------------------------

def choose_path(model: nn.Module, path: str = "auto") -> tuple[str, str | None]:
    """("fast" | "hf", why not fast or None). `path` "hf" forces Hugging Face; "fast" raises
    Unsupported when the step cannot run."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if path == "hf":
        return "hf", "asked for"
    try:
        check_model(model)
        _kernels()
    except Unsupported as why:
        if path == "fast":
            raise
        return "hf", str(why)
    return "fast", None


def _eos_ids(model: nn.Module) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def fast_generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                  ignore_eos: bool = False, profile: bool = False) -> dict:
    """As `timed_generate`, through the fast step: greedy, or sampled from softmax(logits /
    temperature) with torch's global generator (seed it with torch.manual_seed). Stops after an
    end-of-text token unless `ignore_eos` (then, as Hugging Face's min_new_tokens does, end-of-text
    is never chosen). Building the step is timed apart (`build_seconds`)."""
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"the fast step decodes one sequence, got ids shaped {list(ids.shape)}")
    t0 = time.perf_counter()
    decoder = FastDecoder(model, ids.shape[1] + max_new_tokens)
    build_seconds = time.perf_counter() - t0
    eos = _eos_ids(model)

    def pick(logits: torch.Tensor) -> int:
        if ignore_eos and eos:  # in place: the step overwrites its logits on the next call anyway
            logits[eos] = float("-inf")
        if temperature > 0:
            return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))
        return int(logits.argmax())

    if profile:
        decoder.profile(True)
    tokens: list[int] = []
    start = _now()
    token = pick(decoder.prefill(ids))
    tokens.append(token)
    first = _now()
    pos = ids.shape[1]
    with torch.no_grad():
        while len(tokens) < max_new_tokens and (ignore_eos or token not in eos):
            token = pick(decoder.step(token, pos))
            tokens.append(token)
            pos += 1
    stop = _now()
    result = {**_result(torch.tensor(tokens, dtype=torch.long), ids.shape[1], start, first, stop),
              "decode_path": "fast", "build_seconds": build_seconds}
    if profile:
        steps, step_seconds, linear_seconds, attention_seconds = decoder.profile()
        result["step_profile"] = {"steps": steps, "step_cpu_seconds": step_seconds,
                                  "weight_kernel_cpu_seconds": linear_seconds,
                                  "attention_cpu_seconds": attention_seconds,
                                  "phase_wall_seconds": decoder.phase_profile()}
    return result


def generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, *, path: str = "auto",
             pad_token_id: int | None = None, temperature: float = 0.0, ignore_eos: bool = False,
             profile: bool = False) -> dict:
    """Generate with the fast step when `choose_path` allows, else Hugging Face `generate`; timed.
    The result says which ran ("decode_path") and, for "hf", why ("fast_unavailable"; None for "fast")."""
    chosen, why = choose_path(model, path)
    if chosen == "fast":
        try:
            return {**fast_generate(model, ids, max_new_tokens, temperature=temperature, ignore_eos=ignore_eos,
                                    profile=profile), "fast_unavailable": None}
        except Unsupported as error:  # found while building (a module kind, a norm)
            if path == "fast":
                raise
            why = str(error)
    return {**timed_generate(model, ids, max_new_tokens, pad_token_id=pad_token_id, temperature=temperature,
                             ignore_eos=ignore_eos), "fast_unavailable": why}
