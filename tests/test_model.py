"""uni1_core.model against transformers' ChameleonForConditionalGeneration, and the static KV cache
against the full forward.

Every reference is a tiny random checkpoint written by transformers' save_pretrained (sharded,
Hugging Face key names); uni1_core loads it with no conversion.
"""
from __future__ import annotations

import json
import re
import time

import pytest
import torch

from tests.tiny_chameleon import MASKED_IDS, VOCAB, collapse_qk_norm, make_reference, reference_logits
from uni1_core.checkpoint import CheckpointError, list_safetensors_dir
from uni1_core.model import KVCache, ModelConfig, Uni1Model

ATOL = 1e-4

# name -> transformers config overrides; every variant is checked for logit parity
VARIANTS = {
    "gqa_prenorm": dict(),
    "swin_norm": dict(swin_norm=True),
    "per_shard_qk_norm": dict(model_parallel_size=2),
    "mha_biases_swin": dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True, swin_norm=True),
    "rope_linear": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
    "rope_dynamic": dict(max_position_embeddings=8,
                         rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (folder, transformers reference model), built once for the module."""
    out = {}
    for seed, (name, overrides) in enumerate(VARIANTS.items()):
        folder = tmp_path_factory.mktemp(name)
        ref = make_reference(folder, seed=seed, **overrides)
        if name == "per_shard_qk_norm":
            collapse_qk_norm(folder, model_parallel_size=2)
        out[name] = (folder, ref)
    return out


def random_ids(batch, length, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Parity with transformers

@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(checkpoints, name):
    folder, ref = checkpoints[name]
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    ids = random_ids(3, 13, seed=1)            # 13 > 8: past max_position_embeddings for rope_dynamic
    logits = model(ids)
    assert logits.dtype == torch.float32 and logits.shape == (3, 13, VOCAB)
    expected = reference_logits(ref, ids)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    with torch.no_grad():                      # inference mode: the same code
        torch.testing.assert_close(model(ids), expected, atol=ATOL, rtol=0)


def test_checkpoint_is_sharded_and_every_key_is_used(checkpoints):
    folder, ref = checkpoints["gqa_prenorm"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    ours = set(model.state_dict())
    in_file = set(index["weight_map"])
    vq = {k for k in in_file if k.startswith("model.vqmodel.")}
    assert vq, "the reference writes its VQ-VAE; the loader must skip it by name"
    assert in_file - vq == ours            # no missing, no unexpected key, names unchanged
    assert list(model.state_dict()) == [k for k in ref.state_dict() if not k.startswith("model.vqmodel.")]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref.state_dict()[key], atol=0, rtol=0)
    assert all(p.device.type == "cpu" and not p.requires_grad for p in model.parameters())


def test_per_shard_qk_norm_is_stored_collapsed_and_expanded_at_load(checkpoints):
    folder, ref = checkpoints["per_shard_qk_norm"]
    entries = list_safetensors_dir(folder)
    head_dim = 32 // 4
    assert entries["model.layers.0.self_attn.q_norm.weight"].shape == (2, head_dim)
    assert entries["model.layers.0.self_attn.k_norm.bias"].shape == (2, head_dim)
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    qk_norm = model.model.layers[1].attention.qk_norm           # rows: 4 query heads, then 2 key heads
    assert qk_norm.weight.shape == (6, head_dim)
    torch.testing.assert_close(qk_norm.weight[:4], ref.model.layers[1].self_attn.q_norm.weight, atol=0, rtol=0)
    torch.testing.assert_close(qk_norm.bias[4:], ref.model.layers[1].self_attn.k_norm.bias, atol=0, rtol=0)
    # heads 0,1 share shard 0's affine and heads 2,3 shard 1's, and the shards differ
    q_bias = qk_norm.bias[:4]
    assert torch.equal(q_bias[0], q_bias[1]) and not torch.equal(q_bias[1], q_bias[2])


def test_image_logits_masked_by_vocabulary_map(checkpoints, tmp_path):
    folder, _ = checkpoints["gqa_prenorm"]
    model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
    assert model.config.masked_token_ids == MASKED_IDS
    logits = model(random_ids(1, 4))
    assert (logits[..., MASKED_IDS] == torch.finfo(torch.float32).min).all()
    others = [i for i in range(VOCAB) if i not in MASKED_IDS]
    assert (logits[..., others] > -1e4).all()
    # mask_image_logits: false keeps them
    raw = json.loads((folder / "config.json").read_text())
    raw["mask_image_logits"] = False
    unmasked = Uni1Model(ModelConfig.from_dict(raw))
    unmasked.load_state_dict(model.state_dict())
    assert (unmasked(random_ids(1, 4))[..., MASKED_IDS] > -1e4).all()


def test_bf16_and_auto_dtype(checkpoints, tmp_path):
    folder, ref = checkpoints["gqa_prenorm"]
    ids = random_ids(2, 9, seed=3)
    fp32 = reference_logits(ref, ids)
    model = Uni1Model.from_pretrained(folder, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    logits = model(ids)
    assert logits.dtype == torch.float32
    # bf16 rounding moves the logits; ours must stay as close to fp32 as transformers' own bf16 run
    visible = [i for i in range(VOCAB) if i not in MASKED_IDS]
    ref.to(torch.bfloat16)
    ref_bf16 = reference_logits(ref, ids)
    ref.save_pretrained(tmp_path, safe_serialization=True)      # a bf16 checkpoint, for "auto" below
    ref.to(torch.float32)
    ours_err = (logits - fp32)[..., visible].abs().max()
    ref_err = (ref_bf16 - fp32)[..., visible].abs().max()
    assert 0 < ours_err <= 2 * ref_err, (ours_err, ref_err)
    with torch.no_grad():                      # inference mode: the same code, in bf16 too
        inference_err = (model(ids) - fp32)[..., visible].abs().max()
    assert 0 < inference_err <= 2 * ref_err, (inference_err, ref_err)
    auto = Uni1Model.from_pretrained(tmp_path, dtype="auto")
    assert auto.dtype == torch.bfloat16
    torch.testing.assert_close(auto(ids), logits, atol=0, rtol=0)
    half = Uni1Model.from_pretrained(tmp_path, dtype="float16")
    assert half.dtype == torch.float16 and half(ids).dtype == torch.float32


def test_config_classic_rope_keys_and_bad_configs(checkpoints):
    folder, _ = checkpoints["rope_linear"]
    raw = json.loads((folder / "config.json").read_text())
    cfg = ModelConfig.from_dict(raw)
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.rope_theta) == ("linear", 2.0, 500.0)
    classic = dict(raw, rope_theta=500.0, rope_scaling={"type": "linear", "factor": 2.0})
    classic.pop("rope_parameters")
    old_style = ModelConfig.from_dict(classic)
    assert (old_style.rope_scaling, old_style.rope_factor, old_style.rope_theta) == ("linear", 2.0, 500.0)
    assert old_style.raw is classic
    with pytest.raises(CheckpointError, match="yarn"):
        ModelConfig.from_dict(dict(raw, rope_parameters={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(CheckpointError, match="llama"):
        ModelConfig.from_dict(dict(raw, model_type="llama"))
    with pytest.raises(CheckpointError, match="num_key_value_heads"):
        ModelConfig.from_dict(dict(raw, num_key_value_heads=3))


@pytest.mark.parametrize("name", ["gqa_prenorm", "rope_linear", "rope_dynamic"])
def test_rope_table_and_rotation_equal_the_direct_formula(checkpoints, name):
    """The cached table (rope_for) gives exactly the angles `rope` computes per call, also past
    max_position_embeddings (8 for rope_dynamic, where the base depends on the call), and
    apply_rope's roll form is exactly x * cos + rotate_half(x) * sin."""
    from uni1_core.model import apply_rope

    model = Uni1Model.from_pretrained(checkpoints[name][0], dtype=torch.float32)
    half = model.config.head_dim // 2
    for seq_len in (1, 8, 13, 300):
        positions = torch.tensor([[seq_len - 1, 0], [seq_len // 2, seq_len - 1]])
        cos_ref, sin_ref = model.rope(positions, torch.float32)             # (B, 1, T, D)
        cos, sin_signed = model.rope_for(positions, seq_len, torch.float32)  # (B, T, 1, D)
        assert torch.equal(cos, cos_ref.transpose(1, 2))
        assert torch.equal(sin_signed[..., half:], sin_ref.transpose(1, 2)[..., half:])
        assert torch.equal(sin_signed[..., :half], -sin_ref.transpose(1, 2)[..., :half])
        x = torch.randn(2, 2, 3, 2 * half, generator=torch.Generator().manual_seed(seq_len))
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        cos, sin = cos_ref.transpose(1, 2), sin_ref.transpose(1, 2)
        assert torch.equal(apply_rope(x, cos, sin_signed), x * cos + rotated * sin)


# ---------------------------------------------------------------------------------------------
# The static KV cache equals the full forward

@pytest.fixture(scope="module", params=["gqa_prenorm", "mha_biases_swin"])
def model(request, checkpoints):
    return Uni1Model.from_pretrained(checkpoints[request.param][0], dtype=torch.float32)


@pytest.fixture(params=["autograd", "inference"])
def layer_path(request):
    """Run a test with autograd on (as in training) and off (the layers then run in inference mode)."""
    with torch.set_grad_enabled(request.param == "autograd"):
        yield request.param


def full(model, seq):
    """Logits of one row's whole sequence, without cache."""
    return model(torch.tensor([seq]))[0]


def test_prefill_then_single_tokens_and_windows(model, layer_path):
    ids = random_ids(2, 24, seed=5)
    expected = model(ids)
    cache = model.new_cache(2, 32)
    pieces = [model(ids[:, :7], cache=cache)]
    for t in range(7, 11):
        pieces.append(model(ids[:, t:t + 1], cache=cache))
    pieces.append(model(ids[:, 11:19], cache=cache))
    pieces.append(model(ids[:, 19:24], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, 1), expected, atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [24, 24]


def test_rows_with_different_lengths_padding_and_rollback(model, layer_path):
    """A random schedule of windows with per-row valid counts and rollbacks: after every call,
    the valid logits of each row equal the full forward of that row's sequence."""
    gen = torch.Generator().manual_seed(7)
    B, max_len = 3, 40
    cache = model.new_cache(B, max_len)
    seqs = [[] for _ in range(B)]
    prompt_lens = [5, 2, 8]                     # like a conditional and a shorter unconditional row
    T = max(prompt_lens)
    ids = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(prompt_lens):
        seqs[b] = torch.randint(0, VOCAB, (n,), generator=gen).tolist()
        ids[b, :n] = torch.tensor(seqs[b])
        ids[b, n:] = 3                           # padding: any id, its logits are ignored
    logits = model(ids, cache=cache, n_valid=torch.tensor(prompt_lens))
    for b in range(B):
        torch.testing.assert_close(logits[b, :prompt_lens[b]], full(model, seqs[b]), atol=ATOL, rtol=0)
    rollbacks = 0
    for step in range(14):
        if step % 3 == 2:                        # verification rejected some tokens: roll back
            keep = [max(1, len(s) - int(torch.randint(0, 4, (), generator=gen))) for s in seqs]
            seqs = [s[:k] for s, k in zip(seqs, keep)]
            cache.lengths = torch.tensor(keep)
            rollbacks += 1
        T = int(torch.randint(1, 5, (), generator=gen))
        n = torch.randint(0, T + 1, (B,), generator=gen)
        n[step % B] = T                          # at least one full row
        window = torch.randint(0, VOCAB, (B, T), generator=gen)
        logits = model(window, cache=cache, n_valid=n)
        for b in range(B):
            seqs[b] = seqs[b] + window[b, :n[b]].tolist()
            if n[b]:
                torch.testing.assert_close(logits[b, :n[b]], full(model, seqs[b])[-int(n[b]):], atol=ATOL, rtol=0)
        assert cache.lengths.tolist() == [len(s) for s in seqs]
    assert rollbacks >= 4


def test_last_only_gives_each_rows_last_real_token(model, layer_path):
    ids = random_ids(2, 9, seed=11)
    expected = model(ids)
    torch.testing.assert_close(model(ids, last_only=True), expected[:, -1:], atol=ATOL, rtol=0)
    cache = model.new_cache(2, 12)
    last = model(ids, cache=cache, n_valid=torch.tensor([9, 4]), last_only=True)
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], torch.stack([expected[0, 8], expected[1, 3]]), atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [9, 4]


def test_tree_window_scores_every_branch_as_its_own_sequence(model, layer_path):
    """A window given as a tree (the sampler's branches): each token's logits equal the full
    forward of the prefix, its ancestors and itself, at rows of different cache lengths."""
    prompt = random_ids(2, 8, seed=12)
    window = random_ids(2, 7, seed=13)
    # a chain of 4, two alternatives to token 1 (children of 0), one to token 3 and its child
    tree = [-1, 0, 1, 2, 0, 0, 2, 6]
    ids = torch.cat([window, random_ids(2, 1, seed=14)], 1)
    lengths = [8, 5]
    cache = model.new_cache(2, 20)
    model(prompt, cache=cache, n_valid=torch.tensor(lengths))
    logits = model(ids, cache=cache, tree=tree)
    for b, n in enumerate(lengths):
        for t in range(len(tree)):
            path, k = [], t
            while k >= 0:
                path.insert(0, int(ids[b, k]))
                k = tree[k]
            expected = full(model, prompt[b, :n].tolist() + path)[-1]
            torch.testing.assert_close(logits[b, t], expected, atol=ATOL, rtol=0)
    chain = model.new_cache(2, 20)
    model(prompt, cache=chain, n_valid=torch.tensor(lengths))
    torch.testing.assert_close(model(window[:, :4], cache=chain, tree=[-1, 0, 1, 2]), logits[:, :4], atol=ATOL, rtol=0)
    for bad in ([0, 0, 1], [-1, 1, 0], [-1, -1, 0], [-1, 0]):
        with pytest.raises(ValueError, match="parent index"):
            model(window[:, :3], cache=model.new_cache(2, 20), tree=bad)
    with pytest.raises(ValueError, match="need a cache"):
        model(window[:, :3], tree=[-1, 0, 0])


def test_rollback_overwrites_stale_slots(model, layer_path):
    ids = random_ids(1, 12, seed=9)
    cache = model.new_cache(1, 16)
    model(ids, cache=cache)
    cache.lengths = [6]                          # keep 6 tokens, forget 6
    new = random_ids(1, 3, seed=10)
    logits = model(new, cache=cache)
    seq = ids[0, :6].tolist() + new[0].tolist()
    torch.testing.assert_close(logits[0], full(model, seq)[6:], atol=ATOL, rtol=0)
    assert cache.lengths.tolist() == [9]


def test_cache_errors_and_shape(model):
    cfg = model.config
    cache = model.new_cache(2, 10)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, 10, cfg.head_dim)
    assert cache.k.dtype == model.dtype and cache.lengths.dtype == torch.long
    with pytest.raises(ValueError, match="max_len"):
        model(random_ids(2, 11), cache=cache)
    with pytest.raises(ValueError, match="rows"):
        model(random_ids(3, 2), cache=cache)
    with pytest.raises(ValueError, match="n_valid"):
        model(random_ids(2, 2), n_valid=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="n_valid must lie in 0..2"):
        model(random_ids(2, 2), cache=cache, n_valid=torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="lengths"):
        cache.lengths = [3, 11]
    assert cache.lengths.tolist() == [0, 0]


def test_fused_storage_speaks_hugging_face_names(checkpoints):
    """q/k/v, gate/up and the qk-norms are stored fused as plain nn.Linear modules (what a
    weight-only quantiser swaps); state_dict() splits them into views named as in the checkpoint,
    load_state_dict() takes those names back, and the modules follow in-place writes and new
    tensors (nothing is cached beside the parameters)."""
    model = Uni1Model.from_pretrained(checkpoints["mha_biases_swin"][0], dtype=torch.float32)
    layer = model.model.layers[1]
    for name in ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2"):
        assert type(layer.get_submodule(name)) is torch.nn.Linear
    assert {n for n, _ in model.named_parameters() if "layers.0." in n} == {
        f"model.layers.0.{m}.{p}" for m in ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2",
                                            "attention.qk_norm") for p in ("weight", "bias")
    } | {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"}
    state = model.state_dict()
    wqkv = layer.attention.wqkv.weight
    q, k, v = (state[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert (q.shape, k.shape, v.shape) == ((32, 32), (32, 32), (32, 32))
    assert q.data_ptr() == wqkv.data_ptr() and torch.equal(torch.cat([q, k, v]), wqkv)
    gate, up = state["model.layers.1.mlp.gate_proj.weight"], state["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(torch.cat([gate, up]), layer.feed_forward.w13.weight)
    assert state["model.layers.1.self_attn.k_norm.bias"].shape == (4, 8)
    assert not any(".attention." in k or ".feed_forward." in k for k in state)

    ids = random_ids(2, 6, seed=4)
    before = model(ids)
    with torch.no_grad():
        layer.attention.wqkv.weight[32:64].mul_(-2.0)       # k rows, in place, like an optimiser step
    changed = model(ids)
    assert not torch.allclose(changed, before, atol=1e-3)
    fresh = Uni1Model(model.config)
    fresh.load_state_dict(model.state_dict())               # Hugging Face names in, fused tensors out
    torch.testing.assert_close(fresh(ids), changed, atol=0, rtol=0)
    internal = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh.load_state_dict(internal)                         # the internal names load as well
    torch.testing.assert_close(fresh(ids), changed, atol=0, rtol=0)
    model.to(torch.float64)
    assert model.model.layers[0].attention.wqkv.weight.dtype == torch.float64
    torch.testing.assert_close(model(ids), changed, atol=1e-5, rtol=0)


def test_training_step_reaches_every_fused_weight(checkpoints):
    """Autograd runs the same path: every parameter of every layer gets a gradient."""
    model = Uni1Model.from_pretrained(checkpoints["mha_biases_swin"][0], dtype=torch.float32)
    model.requires_grad_(True)
    ids = random_ids(2, 6, seed=8)
    model(ids).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_paths_for_older_torch_give_the_same_logits(checkpoints, monkeypatch):
    """torch < 2.4 has no F.rms_norm and torch < 2.5 no SDPA enable_gqa: the fallbacks (explicit
    formula, repeated kv heads) must give the same logits, with and without the cache."""
    import uni1_core.model as model_module

    model = Uni1Model.from_pretrained(checkpoints["gqa_prenorm"][0], dtype=torch.float32)
    ids = random_ids(2, 9, seed=6)

    def run():
        cache = model.new_cache(2, 12)
        with torch.no_grad():
            steps = [model(ids[:, :5], cache=cache, n_valid=torch.tensor([5, 3]))]
            cache.lengths = [5, 5]
            steps.append(model(ids[:, 5:], cache=cache))
            return model(ids), torch.cat(steps, 1)

    current = run()
    monkeypatch.setattr(model_module, "_HAS_RMS_NORM", False)
    monkeypatch.setattr(model_module, "_SDPA_HAS_GQA", False)
    for new, old in zip(run(), current):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Writing a folder (how the demo model is made) and reading it back

def test_save_pretrained_round_trip(checkpoints, tmp_path):
    folder, _ = checkpoints["per_shard_qk_norm"]
    loaded = Uni1Model.from_pretrained(folder, dtype=torch.bfloat16)
    loaded.save_pretrained(tmp_path / "copy")
    again = Uni1Model.from_pretrained(tmp_path / "copy", dtype="auto")
    assert again.dtype == torch.bfloat16 and again.config.model_parallel_size == 2
    ids = random_ids(2, 7)
    torch.testing.assert_close(again(ids), loaded(ids), atol=0, rtol=0)


def test_model_built_from_a_minimal_config(tmp_path):
    """A config written by hand (the demo model's way): tied embeddings, linear RoPE, extra keys kept."""
    raw = {"model_type": "chameleon", "vocab_size": 50, "hidden_size": 24, "intermediate_size": 40,
           "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1,
           "tie_word_embeddings": True, "rope_theta": 100.0, "rope_scaling": {"type": "linear", "factor": 4.0},
           "vocabulary_map": {"IMGIMGAZ": 7}, "uni1": {"code_offset": 10, "num_codes": 32}}
    torch.manual_seed(0)
    model = Uni1Model(ModelConfig.from_dict(raw))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded = Uni1Model.from_pretrained(tmp_path, dtype="auto")
    assert loaded.dtype == torch.float32
    assert loaded.config.raw["uni1"] == {"code_offset": 10, "num_codes": 32}
    assert loaded.config.rope_scaling == "linear" and loaded.config.rope_factor == 4.0
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.randint(0, 50, (2, 6))
    logits = loaded(ids)
    torch.testing.assert_close(logits, model(ids), atol=0, rtol=0)
    assert (logits[..., 7] == torch.finfo(torch.float32).min).all()
    cache = loaded.new_cache(2, 8)
    steps = torch.cat([loaded(ids[:, :4], cache=cache), loaded(ids[:, 4:], cache=cache)], 1)
    torch.testing.assert_close(steps, logits, atol=ATOL, rtol=0)


def test_from_pretrained_builds_on_meta(checkpoints, monkeypatch):
    """The network is created on the meta device (no random init, no second copy of the weights);
    so is the one-layer probe that checks the config against the weight headers first."""
    devices = []
    build = Uni1Model.__init__

    def spy(self, config):
        build(self, config)
        devices.append(self.lm_head.weight.device.type)

    monkeypatch.setattr(Uni1Model, "__init__", spy)
    model = Uni1Model.from_pretrained(checkpoints["gqa_prenorm"][0], dtype=torch.float32)
    assert devices == ["meta", "meta"]
    assert not any(p.is_meta for p in model.parameters())


def test_model_loaded_under_inference_mode_runs(checkpoints):
    """ComfyUI executes nodes (the loader too) under torch.inference_mode: the weights are then
    inference tensors, which have no version counter; the model must still work."""
    folder = checkpoints["gqa_prenorm"][0]
    with torch.inference_mode():
        model = Uni1Model.from_pretrained(folder, dtype=torch.float32)
        ids = random_ids(2, 7, seed=3)
        logits = model(ids)
    torch.testing.assert_close(logits, Uni1Model.from_pretrained(folder, dtype=torch.float32)(ids), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Bad configs: a clear CheckpointError, fast, before any network is built (issue 16)

def _config_error(folder, edit) -> tuple[str, float]:
    """Rewrite folder/config.json with `edit(raw)` (or the text it returns), load, and return the
    error's message and the seconds it took."""
    path = folder / "config.json"
    original = path.read_text()
    raw = json.loads(original)
    new = edit(raw)
    path.write_text(new if isinstance(new, str) else json.dumps(raw if new is None else new))
    try:
        start = time.perf_counter()
        with pytest.raises(CheckpointError) as err:
            Uni1Model.from_pretrained(folder, dtype=torch.float32)
        return str(err.value), time.perf_counter() - start
    finally:
        path.write_text(original)


POSITIVE = "must be a positive whole number, got"
BAD_CONFIGS = {
    # name: (edit of the raw config, returning a replacement if any; the message it must give)
    "a_list": (lambda raw: [], r"config must be a JSON object of settings, got list \[\]"),
    "zero_heads": (lambda raw: raw.update(num_attention_heads=0), f"num_attention_heads {POSITIVE} 0"),
    "negative_hidden": (lambda raw: raw.update(hidden_size=-32), f"hidden_size {POSITIVE} -32"),
    "zero_kv_heads": (lambda raw: raw.update(num_key_value_heads=0), f"num_key_value_heads {POSITIVE} 0"),
    "string_vocab": (lambda raw: raw.update(vocab_size="96"), f'vocab_size {POSITIVE} "96"'),
    "bool_layers": (lambda raw: raw.update(num_hidden_layers=True), f"num_hidden_layers {POSITIVE} true"),
    "fractional_layers": (lambda raw: raw.update(num_hidden_layers=2.5), f"num_hidden_layers {POSITIVE} 2.5"),
    "negative_eps": (lambda raw: raw.update(rms_norm_eps=-1e-5), "rms_norm_eps must be a positive number"),
    "heads_not_dividing_hidden": (lambda raw: raw.update(num_attention_heads=5, num_key_value_heads=5),
                                  "hidden_size 32 is not a multiple of num_attention_heads 5"),
    "rope_parameters_a_string": (lambda raw: raw.update(rope_parameters="big"),
                                 "rope_parameters / rope_scaling must be an object"),
    "vocabulary_map_a_list": (lambda raw: raw.update(vocabulary_map=[1, 2]),
                              "vocabulary_map must map token names to ids"),
    "deeply_nested": (lambda raw: "[" * 100_000 + "]" * 100_000, "is not readable JSON"),
    "a_million_layers": (lambda raw: raw.update(num_hidden_layers=1_000_000),
                         r"num_hidden_layers 1000000, but the weights in .* hold layers 0..1 \(2 in all\): "
                         r"they lack 'model.layers.2.\*'"),
    "fewer_layers_than_the_weights": (lambda raw: raw.update(num_hidden_layers=1),
                                      r"num_hidden_layers 1, .* hold layers 0..1 .*"
                                      r"'model.layers.1.\*' and above are unexpected"),
    "huge_vocab": (lambda raw: raw.update(vocab_size=10**9),
                   r"'model.embed_tokens.weight' has shape \(96, 32\), expected \(1000000000, 32\) "
                   r"from config.json \(vocab_size"),
    "huge_hidden": (lambda raw: raw.update(hidden_size=2**20, intermediate_size=2**22),
                    r"has shape \(96, 32\), expected \(96, 1048576\) from config.json"),
    "more_heads": (lambda raw: raw.update(num_attention_heads=8, num_key_value_heads=8, head_dim=8),
                   r"'model.layers.0.self_attn.q_proj.weight' has shape \(32, 32\), expected \(64, 32\)"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_a_fast_clear_error(checkpoints, case):
    folder = checkpoints["gqa_prenorm"][0]
    edit, message = BAD_CONFIGS[case]
    text, seconds = _config_error(folder, edit)
    assert str(folder / "config.json") in text or str(folder) in text
    assert re.search(message, text), text
    assert "Fix:" in text
    assert seconds < 0.5, f"{case}: {seconds:.2f} s"


# ---------------------------------------------------------------------------------------------
# The int8 KV cache (issue 19 item 2)

def test_quantize_per_vector_bounds():
    from uni1_core.model import quantize_per_vector

    x = torch.randn(3, 5, 2, 16, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 16)
    x[0, 0, 0] = 0.0                                           # a zero vector stays zero
    q, scale = quantize_per_vector(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (3, 5, 2, 1)
    assert q.abs().max() == 127 and (q[0, 0, 0] == 0).all()
    assert ((q.float() * scale - x).abs() <= scale / 2 * (1 + 1e-6)).all()
    assert (q.abs().amax(-1)[1:] == 127).all()                 # every nonzero vector uses the full range


class FakeQuantCache(KVCache):
    """A float cache that stores what the int8 cache reads back: the reference for its arithmetic."""

    def write(self, layer, k, v, rows, slots, start):
        from uni1_core.model import quantize_per_vector

        def dequantised(x):
            q, scale = quantize_per_vector(x)
            return q.float() * scale
        super().write(layer, dequantised(k), dequantised(v), rows, slots, start)


def twin_caches(model, B, max_len):
    cfg = model.config
    int8 = model.new_cache(B, max_len, dtype="int8")
    fake = FakeQuantCache(cfg.num_hidden_layers, B, cfg.num_key_value_heads, max_len, cfg.head_dim,
                          dtype=torch.float32, device="cpu")
    return int8, fake


def test_int8_cache_layout_and_size(model):
    cfg = model.config
    cache = model.new_cache(2, 10, dtype=torch.int8)
    assert cache.quantized and cache.k.dtype == torch.int8
    assert cache.k_scale.shape == (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, 10, 1)
    bf16 = model.new_cache(2, 10, dtype="bfloat16")
    assert not bf16.quantized and bf16.k.dtype == torch.bfloat16
    d = cfg.head_dim
    assert cache.nbytes * (2 * d) == bf16.nbytes * (d + 4)     # int8 vectors + one fp32 scale each
    with pytest.raises(ValueError, match="int8"):
        model.new_cache(2, 10, dtype=torch.int32)


def test_int8_cache_with_ragged_rows_rollback_and_trees(model, layer_path):
    """The same schedule as the float cache tests (windows of several lengths, per-row valid
    counts, rollbacks, a tree window, a branch moved into the chain): at every call the int8
    cache gives exactly the logits of a float cache holding its dequantised vectors, and stays
    within quantisation error of the full forward."""
    gen = torch.Generator().manual_seed(21)
    B, max_len = 3, 48
    int8, fake = twin_caches(model, B, max_len)
    seqs = []
    prompt_lens = [6, 3, 8]
    ids = torch.full((B, 8), 3)
    for b, n in enumerate(prompt_lens):
        seqs.append(torch.randint(0, VOCAB, (n,), generator=gen).tolist())
        ids[b, :n] = torch.tensor(seqs[b])
    worst = 0.0

    def both(window, **kwargs):
        nonlocal worst
        got = model(window, cache=int8, **kwargs)
        torch.testing.assert_close(got, model(window, cache=fake, **kwargs), atol=1e-5, rtol=0)
        return got

    visible = [i for i in range(VOCAB) if i not in MASKED_IDS]

    def check(logits, b, tokens, n):
        nonlocal worst
        expected = full(model, tokens)[-n:, visible]
        worst = max(worst, float((logits[:, visible] - expected).abs().max() / expected.abs().max()))

    logits = both(ids, n_valid=torch.tensor(prompt_lens))
    for b, n in enumerate(prompt_lens):
        check(logits[b, :n], b, seqs[b], n)
    for step in range(9):
        if step % 3 == 2:                                    # roll back
            keep = [max(1, len(s) - int(torch.randint(0, 4, (), generator=gen))) for s in seqs]
            seqs = [s[:k] for s, k in zip(seqs, keep)]
            int8.lengths = fake.lengths = torch.tensor(keep)
        T = int(torch.randint(1, 5, (), generator=gen))
        n = torch.randint(0, T + 1, (B,), generator=gen)
        n[step % B] = T
        window = torch.randint(0, VOCAB, (B, T), generator=gen)
        logits = both(window, n_valid=n)
        for b in range(B):
            seqs[b] = seqs[b] + window[b, :n[b]].tolist()
            if n[b]:
                check(logits[b, :n[b]], b, seqs[b], int(n[b]))
    # a tree window: token 0, its chain child 1 and an alternative 2; then the alternative is
    # accepted, its key and value moved into slot lengths + 1, as the sampler does
    tree_ids = torch.randint(0, VOCAB, (B, 3), generator=gen)
    lengths = int8.lengths.clone()
    logits = both(tree_ids, tree=[-1, 0, 0])
    for b in range(B):
        for t, path in enumerate(([0], [0, 1], [0, 2])):
            check(logits[b, t:t + 1], b, seqs[b] + tree_ids[b, path].tolist(), 1)
    for cache in (int8, fake):
        cache.move_slots(torch.ones(B, dtype=torch.bool), lengths + 1, lengths + 2)
        cache.lengths = lengths + 2
    seqs = [s + tree_ids[b, [0, 2]].tolist() for b, s in enumerate(seqs)]
    nxt = torch.randint(0, VOCAB, (B, 2), generator=gen)
    logits = both(nxt)
    for b in range(B):
        check(logits[b], b, seqs[b] + nxt[b].tolist(), 2)
    # quantisation error relative to the largest logit: 0.017-0.025 on these random models (weights
    # of std 0.3, so errors grow through the layers); the exact check is the fake-quant twin above
    assert 0 < worst < 0.05, worst


def test_move_slots_on_a_float_cache_equals_the_full_forward(model):
    prompt = random_ids(2, 6, seed=30)
    tree_ids = random_ids(2, 3, seed=31)
    cache = model.new_cache(2, 12)
    model(prompt, cache=cache)
    model(tree_ids, cache=cache, tree=[-1, 0, 0])
    rows = torch.tensor([True, False])                      # row 0 takes the branch, row 1 its chain
    cache.move_slots(rows, torch.tensor([7, 7]), torch.tensor([8, 8]))
    cache.lengths = [8, 8]
    nxt = random_ids(2, 1, seed=32)
    logits = model(nxt, cache=cache)
    for b, path in enumerate(([0, 2], [0, 1])):
        seq = prompt[b].tolist() + tree_ids[b, path].tolist() + nxt[b].tolist()
        torch.testing.assert_close(logits[b, 0], full(model, seq)[-1], atol=ATOL, rtol=0)


def test_int8_cache_in_bf16_is_as_close_as_the_bf16_cache(checkpoints):
    model = Uni1Model.from_pretrained(checkpoints["gqa_prenorm"][0], dtype=torch.bfloat16)
    ids = random_ids(2, 12, seed=33)
    reference = Uni1Model.from_pretrained(checkpoints["gqa_prenorm"][0], dtype=torch.float32)(ids)
    visible = [i for i in range(VOCAB) if i not in MASKED_IDS]
    errors = {}
    for kind in ("bfloat16", "int8"):
        cache = model.new_cache(2, 12, dtype=kind)
        steps = [model(ids[:, :8], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(8, 12)]
        errors[kind] = float((torch.cat(steps, 1) - reference)[..., visible].abs().max())
    assert errors["int8"] <= 2 * errors["bfloat16"], errors
