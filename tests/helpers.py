"""Shared builders for the tests: tiny random models of every family, a tiny tokenizer, the CLI run in
process, sparse weights of known layout. Plain functions, imported by name (`from helpers import ...`);
the fixtures that use them live in conftest.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"  # small saved folders from earlier releases, loaded as users would

FAMILIES = ("llama", "gpt_neox", "opt", "gpt2")
SAMPLE_TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
    "In the beginning God created the heaven and the earth. And the earth was without form. "
) * 40


def load_benchmark(path: str, name: str):
    """A benchmark script (`path` from the repository root) imported as module `name`: the scripts are
    not a package. Registered in sys.modules, where dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def watch_tensor_reads(monkeypatch, on_read) -> None:
    """Patch safetensors.safe_open (as artifact.py calls it) so that every tensor read from a file calls
    on_read(key, tensor) first."""
    import safetensors

    real_open = safetensors.safe_open

    class Watched:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            self.handle = self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_tensor(self, key):
            tensor = self.handle.get_tensor(key)
            on_read(key, tensor)
            return tensor

    monkeypatch.setattr(safetensors, "safe_open", Watched)


def tiny_config(family: str, vocab: int = 128):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=1)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                           **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=128, **common)
    if family == "opt":
        return OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=128, word_embed_proj_dim=32, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, n_inner=64, **common)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    with torch.no_grad():  # random init gives tiny weights; scale up so pruning visibly matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def windows(n: int = 4, seqlen: int = 24, seed: int = 0) -> torch.Tensor:
    """n random token windows of tiny_model's vocabulary (ids from 2: past the special ones), seeded."""
    return torch.randint(2, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def forward_inputs(model, ids: torch.Tensor, sites, batch: int | None = None) -> dict:
    """(layer index, linear name) -> what that linear sees in a plain forward pass of `model` over `ids`, 2-D
    (`batch` windows a pass: the batches' inputs concatenated in order)."""
    from sparse_expansion.arch import decoder_layers

    seen, handles = {}, []
    for i, layer in enumerate(decoder_layers(model)):
        for name in sites:
            def hook(_m, args, _o, key=(i, name)):
                seen.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]).clone())
            handles.append(layer.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch or ids.shape[0]):
                model(ids[start:start + (batch or ids.shape[0])], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {key: torch.cat(parts) for key, parts in seen.items()}

def tiny_tokenizer(vocab: int = 128):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:64])
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def run_cli(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sparse-expansion ARGS` run in this process."""
    from sparse_expansion.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def nm_weight(shape: tuple[int, ...], n: int, m: int, seed: int = 0) -> torch.Tensor:
    """Random weight with exactly m - n zeros in every group of m (some groups emptier)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    groups = w.reshape(*shape[:-1], -1, m)
    drop = torch.rand(groups.shape, generator=g).argsort(-1)[..., : m - n]
    groups.scatter_(-1, drop, 0.0)
    w = groups.reshape(shape)
    w[..., 0, :] = 0.0  # an all-zero row: every group stores zero fillers
    return w


def unstructured_weight(shape: tuple[int, ...], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    w[torch.rand(shape, generator=g) >= density] = 0.0
    if shape[-2] > 1:
        w[..., 1, :] = 0.0  # all-zero row
    if shape[-1] > 2:
        w[..., :, 2] = 0.0  # all-zero column
    w[..., 0, :] = torch.randn(shape[-1], generator=g) + 5.0  # fully dense row
    return w


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sgatlin_ddp_worker(rank: int, world: int, port: int, cfg, data, out: str) -> None:
    """One gloo rank of an sgatlin training run. Here, not in the test file: spawned processes import
    it by module name, and test files are not importable modules under pytest's importlib mode."""
    import torch.distributed as dist

    from sparse_expansion.sgatlin.training import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train(cfg, data, Path(out) if rank == 0 else None, progress=False)
    finally:
        dist.destroy_process_group()


def tiny_gemma3_multimodal(text_config: dict):
    """A tiny `gemma3` (the multimodal wrapper) config around `text_config`: its text decoder runs a
    text-only prompt, the vision tower is the smallest transformers accepts."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "gemma3", text_config=text_config, tie_word_embeddings=True,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=5, eoi_token_index=6, image_token_index=7)
