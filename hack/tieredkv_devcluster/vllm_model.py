"""A tiny Llama model with seeded random weights, written locally for real vLLM engines to serve.

No weights can be downloaded here, and vLLM's `load_format="dummy"` gives uniform logits, so outputs would
not depend on the KV cache at all. This writes a small `LlamaForCausalLM` (config.json via transformers,
float32 weights via safetensors, a word-level tokenizer via `tokenizers` so `vllm serve` can load it too)
whose greedy outputs do depend on every KV byte. The same seed always gives the same bytes.

Needs the vLLM venv (transformers, safetensors, tokenizers, numpy). Usable as a script:

    python -m tieredkv_devcluster.vllm_model [--seed N] [--cache DIR]    # prints the model directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
"""Bump when what is written changes, so cached models are rewritten."""


@dataclass(frozen=True)
class TinyLlama:
    """Shape of the generated model (defaults: ~1 M parameters, 1 KiB of KV per token per layer)."""

    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 1024
    max_position_embeddings: int = 8192
    weight_std: float = 0.08


BENCH_SHAPE = TinyLlama(
    num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=2, intermediate_size=1536, weight_std=0.04
)
"""A larger shape for end-to-end timing (~27 M parameters): a 4k-token prefill costs seconds on 2 cores."""


def default_cache_dir() -> Path:
    """`$TIEREDKV_CACHE/models`, by default ~/.cache/tieredkv/models (outside the repository)."""
    return Path(os.environ.get("TIEREDKV_CACHE", Path.home() / ".cache" / "tieredkv")) / "models"


def ensure_model(seed: int = 0, cache_dir: Path | None = None, shape: TinyLlama | None = None) -> Path:
    """The directory of the tiny model for `seed`, written once (atomically: temp dir, then rename)."""
    shape = shape or TinyLlama()
    root = cache_dir or default_cache_dir()
    target = root / f"tiny-llama-s{seed}-f{FORMAT}-{_shape_tag(shape)}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
    tmp.chmod(0o755)
    try:
        write_model(tmp, seed, shape)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its copy is identical
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_model(out: Path, seed: int, shape: TinyLlama) -> None:
    """Write config.json, model.safetensors, tokenizer files and generation_config.json into `out`."""
    from safetensors.numpy import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(out))
    save_file(_weights(seed, shape), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_tokenizer(out, shape.vocab_size)
    (out / "tieredkv-model.json").write_text(
        json.dumps({"seed": seed, "format": FORMAT, "shape": asdict(shape)}, indent=2, sort_keys=True)
    )


def _shape_tag(shape: TinyLlama) -> str:
    return (
        f"l{shape.num_layers}h{shape.hidden_size}a{shape.num_heads}kv{shape.num_kv_heads}"
        f"i{shape.intermediate_size}v{shape.vocab_size}p{shape.max_position_embeddings}w{shape.weight_std}"
    )


def _weights(seed: int, shape: TinyLlama) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head_dim = shape.hidden_size // shape.num_heads
    hidden, inter = shape.hidden_size, shape.intermediate_size

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * shape.weight_std).astype(np.float32)

    weights: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": (rng.standard_normal((shape.vocab_size, hidden))).astype(np.float32),
        "model.norm.weight": np.ones(hidden, dtype=np.float32),
        "lm_head.weight": dense(shape.vocab_size, hidden),
    }
    for i in range(shape.num_layers):
        prefix = f"model.layers.{i}"
        weights[f"{prefix}.self_attn.q_proj.weight"] = dense(shape.num_heads * head_dim, hidden)
        weights[f"{prefix}.self_attn.k_proj.weight"] = dense(shape.num_kv_heads * head_dim, hidden)
        weights[f"{prefix}.self_attn.v_proj.weight"] = dense(shape.num_kv_heads * head_dim, hidden)
        weights[f"{prefix}.self_attn.o_proj.weight"] = dense(hidden, shape.num_heads * head_dim)
        weights[f"{prefix}.mlp.gate_proj.weight"] = dense(inter, hidden)
        weights[f"{prefix}.mlp.up_proj.weight"] = dense(inter, hidden)
        weights[f"{prefix}.mlp.down_proj.weight"] = dense(hidden, inter)
        weights[f"{prefix}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[f"{prefix}.post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    return weights


def _write_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer: "<pad>", "<s>", "</s>", "<unk>", then words w4 … w{vocab_size-1}."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": 8192,
        "chat_template": (
            "{% for message in messages %}{{ message['content'] }}{% if not loop.last %} {% endif %}"
            "{% endfor %}"
        ),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True))
    (out / "special_tokens_map.json").write_text(
        json.dumps({k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    )


def prompt_tokens(length: int, seed: int, vocab_size: int = 1024) -> list[int]:
    """A deterministic prompt of ordinary (non-special) token ids."""
    rng = np.random.default_rng(10_000 + seed)
    return [int(t) for t in rng.integers(4, vocab_size, size=length)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="default: $TIEREDKV_CACHE/models")
    parser.add_argument("--bench", action="store_true", help="the larger BENCH_SHAPE model")
    args = parser.parse_args()
    print(ensure_model(args.seed, args.cache, BENCH_SHAPE if args.bench else None))


if __name__ == "__main__":
    main()
