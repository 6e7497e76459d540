"""A complete, tiny, random model folder in the real layout (config.json with our "uni1" section,
model.safetensors, tokenizer.json + tokenizer_config.json, movq.safetensors), built only with
uni1_core's own modules: what the pipeline, the CLI and the nodes load.

The text tokenizer is the demo model's (a real byte-level BPE with every Lumina-mGPT 2.0 special
token, shipped in uni1_core/demo_model/), so the tests need nothing from training/.
The suite shares one such folder through the `tiny_model_folder` fixture (conftest.py)."""
import json
from pathlib import Path

import torch

from uni1_core.checkpoint import DEMO_DIR
from uni1_core.model import ModelConfig, Uni1Model
from uni1_core.movq import MoVQ, MoVQConfig
from uni1_core.tokenizer import TextTokenizer

NUM_CODES = 32


def tokenizer_json() -> dict:
    return json.loads((DEMO_DIR / "tokenizer.json").read_text(encoding="utf-8"))


def build_tokenizer() -> TextTokenizer:
    return TextTokenizer(tokenizer_json(), bos_token=None, eos_token="<|endoftext|>", source="tiny tokenizer")


def build(folder: Path, seed: int = 0, sizes=((64, 64), (32, 64)), grounding: dict | None = None,
          max_positions: int = 512) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_json()
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|endoftext|>"}))
    text_vocab = max(t["id"] for t in tok["added_tokens"]) + 1
    raw = {"model_type": "chameleon", "vocab_size": text_vocab + NUM_CODES, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": max_positions, "rope_theta": 10000.0,
           "rms_norm_eps": 1e-5, "model_parallel_size": 1, "swin_norm": False, "vocabulary_map": {},
           "torch_dtype": "float32",
           "uni1": {"image_token_offset": text_vocab, "num_image_codes": NUM_CODES}}
    if sizes is not None:   # None: the release's sizes
        raw["uni1"].update(sizes=[list(s) for s in sizes], default_size=list(sizes[0]))
    if grounding is not None:
        raw["uni1"]["grounding"] = grounding
    torch.manual_seed(seed)
    model = Uni1Model(ModelConfig.from_dict(raw))
    for p in model.state_dict().values():   # larger than default init, so that samples vary (HF order: views)
        torch.nn.init.normal_(p, std=0.5) if p.dim() > 1 else None
    model.save_pretrained(folder)
    movq = MoVQ(MoVQConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(), n_embed=NUM_CODES,
                           norm_groups=32))
    movq.save_pretrained(folder / "movq.safetensors")
    return folder
