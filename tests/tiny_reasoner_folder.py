"""Tiny random Qwen2 / Qwen3 instruct folders, written by `transformers` itself (save_pretrained)
with a tiny Qwen-format tokenizer.json and the real chat template: what Reasoner.from_pretrained,
the CLI and the nodes load. `transformers` is the reference here, so it is needed to build one."""
import json
from pathlib import Path

import torch

from training.bpe import QWEN25_ADDED, build_bpe_tokenizer_json

QWEN3_ADDED = QWEN25_ADDED + [{"content": c, "special": False}
                              for c in ("<tool_response>", "</tool_response>", "<think>", "</think>")]
TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
CORPUS = ["You plan pictures for an image generator. The user gives a prompt.",
          "Description: two red circles to the left of a blue square on a white table.",
          '```json\n{"version": 1, "subjects": [{"noun": "circle", "count": 2, "color": "red"}]}\n```',
          "a confused grizzly bear in calculus class", "Think about what a good picture needs."] * 2


def tokenizer_json(family: str) -> dict:
    added = QWEN3_ADDED if family == "qwen3" else QWEN25_ADDED
    return build_bpe_tokenizer_json(CORPUS, 256 + 120 + len(added), added)


def build(folder, family: str = "qwen3", seed: int = 0, std: float = 0.3) -> Path:
    """A folder with config.json + model.safetensors (transformers), tokenizer.json and a
    tokenizer_config.json holding the model family's real chat template. GQA (4 heads, 2 KV
    heads); Qwen3 with an explicit head_dim that differs from hidden/heads and tied embeddings,
    Qwen2 with q/k/v biases and an untied head."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = tokenizer_json(family)
    ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
    vocab = max(ids.values()) + 1
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                  pad_token_id=ids["<|endoftext|>"])
    if family == "qwen3":
        config = transformers.Qwen3Config(head_dim=24, tie_word_embeddings=True, rope_theta=1_000_000.0, **common)
    elif family == "qwen2":
        config = transformers.Qwen2Config(tie_word_embeddings=False, rope_theta=10_000.0, **common)
    else:
        raise ValueError(f"family must be qwen2 or qwen3, got {family!r}")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():       # larger than the default init, so that greedy choices are clear-cut
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    template = (TEMPLATES / ("qwen3.jinja" if family == "qwen3" else "qwen2.5-instruct.jinja")).read_text()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": template, "model_max_length": 2048}), encoding="utf-8")
    return folder
