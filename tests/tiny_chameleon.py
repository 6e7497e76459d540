"""Tiny random Chameleon checkpoints written by `transformers`, the reference for uni1_core.model.

Test-only (imports transformers). Configured like Lumina-mGPT 2.0 in miniature: qk-norm, GQA,
a vocabulary_map with some legacy IMGIMG names (masked) and some that are not, a small
VQ-VAE so that `model.vqmodel.*` keys are present, and shards small enough that the folder
has a model.safetensors.index.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 96
MASKED_IDS = list(range(40, 52))          # named IMGIMG...: the reference masks their logits


def vocabulary_map() -> dict:
    names = {f"<tok{i}>": i for i in range(VOCAB)}
    for n, i in enumerate(MASKED_IDS):
        names.pop(f"<tok{i}>")
        names[f"IMGIMG{chr(ord('A') + n // 10)}{chr(ord('A') + n % 10)}Z"] = i
    names["<image>"] = 8
    names["<racm3:break>"] = 60       # image start of 2.0: not an IMGIMG name, never masked
    return names


def tiny_config(**overrides):
    from transformers import ChameleonConfig

    kwargs = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, model_parallel_size=1, swin_norm=False, vocabulary_map=vocabulary_map(),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        vq_config=dict(embed_dim=4, num_embeddings=16, latent_channels=4, resolution=16, in_channels=3,
                       base_channels=32, channel_multiplier=[1], num_res_blocks=1),
        pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return ChameleonConfig(**kwargs)


def randomize_(model, seed: int = 0, per_shard_qk: int | None = None) -> None:
    """Every parameter random (norm weights around 1), so that no term of the network is trivial.

    With per_shard_qk=m, the qk-norm affines are made constant within each group of
    heads // m heads: the expanded form of a per-shard checkpoint with m shards.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                noise += 1.0
            if per_shard_qk and ("q_norm" in name or "k_norm" in name):
                heads = p.shape[0]
                noise = noise[:per_shard_qk].repeat_interleave(heads // per_shard_qk, dim=0)
            p.copy_(noise)


def make_reference(folder: Path, seed: int = 0, max_shard_size="40KB", **overrides):
    """Build, randomise and save a tiny ChameleonForConditionalGeneration; returns it (eval, fp32)."""
    from transformers import ChameleonForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = "eager"
    model = ChameleonForConditionalGeneration(config).eval()
    randomize_(model, seed, per_shard_qk=overrides.get("model_parallel_size")
               if overrides.get("model_parallel_size", 1) > 1 else None)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    return model


def collapse_qk_norm(folder: Path, model_parallel_size: int) -> None:
    """Rewrite a saved checkpoint's qk-norm affines in the release's per-shard layout (mp, head_dim).

    The reference model must have been randomised with per_shard_qk=model_parallel_size, so
    that expanding the collapsed rows again gives back exactly its weights.
    """
    from safetensors.torch import load_file, save_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(folder / shard)
        changed = False
        for key, t in tensors.items():
            if key.endswith(("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")):
                rows = t.shape[0] // model_parallel_size
                collapsed = t[::rows].contiguous()
                assert torch.equal(collapsed.repeat_interleave(rows, dim=0), t)
                tensors[key] = collapsed
                changed = True
        if changed:
            save_file(tensors, folder / shard, metadata={"format": "pt"})


def reference_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()
