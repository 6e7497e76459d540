"""A complete, tiny, random model folder in the real layout (config.json with our "uni1" section,
model.safetensors, tokenizer.json + tokenizer_config.json, movq.safetensors), built only with
uni1_core's own modules: what the pipeline, the CLI and the nodes load."""
import json
from pathlib import Path

import torch

from training.bpe import LUMINA_ADDED, build_bpe_tokenizer_json
from uni1_core.model import ModelConfig, Uni1Model
from uni1_core.movq import MoVQ, MoVQConfig
from uni1_core.tokenizer import TextTokenizer

CORPUS = ["Generate an image of 64x64 according to the following prompt:",
          "two red circles to the left of a blue square", "a green triangle above a yellow star",
          "one small purple ring on a white background"] * 3
NUM_CODES = 32


def tokenizer_json() -> dict:
    return build_bpe_tokenizer_json(CORPUS, 256 + 40 + len(LUMINA_ADDED), LUMINA_ADDED)


def build_tokenizer() -> TextTokenizer:
    return TextTokenizer(tokenizer_json(), bos_token=None, eos_token="<|endoftext|>", source="tiny tokenizer")


def build(folder: Path, seed: int = 0, sizes=((64, 64), (32, 64)), grounding: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_json()
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|endoftext|>"}))
    text_vocab = max(t["id"] for t in tok["added_tokens"]) + 1
    raw = {"model_type": "chameleon", "vocab_size": text_vocab + NUM_CODES, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 512, "rope_theta": 10000.0,
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
