"""uni1_core.model runs Qwen2 and Qwen3 text models: tiny random checkpoints written by
transformers' save_pretrained load with no conversion, and give transformers' logits and greedy
tokens (issue 18, item 1).

Qwen2 (Qwen2.5-Instruct's family): biased q/k/v, unbiased o, no qk-norm. Qwen3: per-head RMSNorm
of q and k over head_dim, an explicit head_dim (here unlike hidden_size // heads). Both: GQA,
RoPE base from the config, tied or separate embeddings.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_chameleon import randomize_
from uni1_core.checkpoint import CheckpointError, list_safetensors_dir
from uni1_core.model import ModelConfig, Uni1Model

ATOL = 1e-4
VOCAB = 80

# name -> (model_type, transformers config overrides)
VARIANTS = {
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_untied_mha": ("qwen2", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen3_head_dim": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "qwen3_biased_untied": ("qwen3", dict(attention_bias=True, tie_word_embeddings=False)),
}


def make_qwen(folder, model_type: str, seed: int, **overrides):
    """Build, randomise and save a tiny Qwen2/Qwen3 causal LM; returns it (eval, fp32)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[model_type]
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize_(model, seed)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="40KB")
    return model


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """name -> (folder, transformers reference), built once."""
    out = {}
    for seed, (name, (model_type, overrides)) in enumerate(VARIANTS.items()):
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, make_qwen(folder, model_type, seed + 10, **overrides))
    return out


def random_ids(batch, length, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_key_loads_and_logits_match(qwen, name):
    folder, ref = qwen[name]
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    cfg = model.config
    assert cfg.model_type == VARIANTS[name][0] and cfg.rope_theta == 1_000_000.0
    assert cfg.qk_norm == ("none" if cfg.model_type == "qwen2" else "rmsnorm")
    assert cfg.masked_token_ids == [] and model._masked_ids is None
    # no missing and no unexpected key: the file's keys are exactly ours (lm_head may be tied)
    in_file = set(list_safetensors_dir(folder))
    ours = set(model.state_dict())
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
        ours.discard("lm_head.weight")
        in_file.discard("lm_head.weight")
    assert in_file == ours
    assert list(model.state_dict()) == list(ref.state_dict())          # names and order
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref.state_dict()[key], atol=0, rtol=0)
    ids = random_ids(3, 11, seed=1)
    with torch.no_grad():
        expected = ref(input_ids=ids).logits.float()
    torch.testing.assert_close(model(ids), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen3_head_dim"])
def test_cache_windows_ragged_rows_and_rollback_match_full_forward(qwen, name):
    model = Uni1Model.from_pretrained(qwen[name][0], dtype=torch.float32)
    ids = random_ids(2, 20, seed=2)
    expected = model(ids)
    cache = model.new_cache(2, 24)
    pieces = [model(ids[:, :6], cache=cache)]
    pieces += [model(ids[:, t:t + 1], cache=cache) for t in range(6, 9)]
    pieces.append(model(ids[:, 9:20], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, 1), expected, atol=ATOL, rtol=0)
    cache.lengths = [7, 4]                       # roll back, then rows of different lengths
    window = random_ids(2, 3, seed=3)
    logits = model(window, cache=cache)
    for b, n in enumerate([7, 4]):
        full = model(torch.cat([ids[b:b + 1, :n], window[b:b + 1]], 1))[0, n:]
        torch.testing.assert_close(logits[b], full, atol=ATOL, rtol=0)


def greedy(model, prompt: torch.Tensor, new_tokens: int, eos: int, pad: int) -> torch.Tensor:
    """Plain greedy decoding with the static cache (prefill, then one token per forward); a row
    that has written eos continues with pad, and decoding stops once every row has: as generate."""
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + new_tokens)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool)
    out = []
    with torch.inference_mode():
        logits = model(prompt, cache=cache, last_only=True)
        while len(out) < new_tokens and not done.all():
            token = torch.where(done, pad, logits[:, -1].argmax(-1))
            out.append(token)
            done |= token == eos
            logits = model(token[:, None], cache=cache)
    return torch.cat([prompt, torch.stack(out, 1)], 1)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_greedy_generation_equals_transformers_generate(qwen, name):
    folder, ref = qwen[name]
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    prompt = random_ids(3, 7, seed=4)
    with torch.no_grad():
        expected = ref.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=40,
                                eos_token_id=2, pad_token_id=0)
    ours = greedy(model, prompt, 40, eos=2, pad=0)
    assert expected.shape[1] > 7 + 10
    assert torch.equal(ours, expected), (ours, expected)


def test_bf16_error_is_as_small_as_transformers_own(qwen, tmp_path):
    folder, ref = qwen["qwen3_head_dim"]
    ids = random_ids(2, 9, seed=5)
    with torch.no_grad():
        fp32 = ref(input_ids=ids).logits.float()
        ref_bf16 = ref.to(torch.bfloat16)(input_ids=ids).logits.float()
    ref.to(torch.float32)
    ours = Uni1Model.from_pretrained(folder, dtype=torch.bfloat16)(ids)
    ours_err, ref_err = (ours - fp32).abs().max(), (ref_bf16 - fp32).abs().max()
    assert 0 < ours_err <= 2 * ref_err, (ours_err, ref_err)


def test_save_pretrained_writes_hugging_face_names_and_reloads(qwen, tmp_path):
    folder, ref = qwen["qwen3_head_dim"]
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    saved = list_safetensors_dir(tmp_path)
    assert saved["model.layers.0.self_attn.q_norm.weight"].shape == (16,)
    assert saved["model.layers.0.self_attn.q_proj.weight"].shape == (64, 32)       # heads * head_dim != hidden
    assert "lm_head.weight" not in saved                                           # tied
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "qwen3" and raw["head_dim"] == 16
    again = Uni1Model.from_pretrained(tmp_path, dtype="auto")
    ids = random_ids(1, 5)
    torch.testing.assert_close(again(ids), model(ids), atol=0, rtol=0)


def test_qwen_config_errors(qwen):
    raw = json.loads((qwen["qwen2_tied"][0] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="sliding-window"):
        ModelConfig.from_dict(dict(raw, use_sliding_window=True))
    with pytest.raises(CheckpointError, match="sliding-window"):
        ModelConfig.from_dict(dict(raw, layer_types=["full_attention", "sliding_attention"]))
    with pytest.raises(CheckpointError, match="rope scaling 'yarn'"):
        ModelConfig.from_dict(dict(raw, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}))
    with pytest.raises(CheckpointError, match="qwen2.*qwen3|Qwen2"):
        ModelConfig.from_dict(dict(raw, model_type="mistral"))
