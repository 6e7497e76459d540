"""MoVQGAN tokenizer: parity with diffusers' VQModel(norm_type="spatial"), exact round trips,
safe and strict loading, pixel helpers. Tiny configs only (the suite runs on 2 CPU cores)."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uni1_core.movq as movq_mod
from uni1_core.movq import (
    MoVQ,
    MoVQConfig,
    center_crop,
    convert_ckpt_to_safetensors,
    pil_to_tensor,
    tensor_to_pil,
)
from uni1_core.checkpoint import CheckpointError

# Three levels, attention on the last (nominal 64 of 256), as the 270M release is laid out.
TINY = MoVQConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(64,), resolution=256, n_embed=64)


def randomised(cfg: MoVQConfig, seed: int = 0) -> MoVQ:
    """A model whose every parameter is random (norm affines and SpatialNorm convs too), so parity
    cannot pass by the default inits hiding a wrong wiring."""
    torch.manual_seed(seed)
    model = MoVQ(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_layer.weight") or re.search(r"norm\w*\.weight$", name):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            elif "quantize" not in name:
                p.mul_(1.5)
    return model


def structured_image(size: int = 32, batch: int = 2) -> torch.Tensor:
    """Gradients, a disc and stripes in [-1, 1]: structure at several scales."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((x**2 + y**2) < 0.4).float()
    stripes = torch.sin(6 * x + 3 * y)
    img = torch.stack([x, disc * 2 - 1, stripes * 0.8])
    return torch.stack([img.flip(-1) if b % 2 else img for b in range(batch)])


# ----------------------------------------------------------------------------- parity with diffusers


def to_diffusers_key(key: str, num_levels: int) -> str:
    """Original MoVQGAN key -> diffusers VQModel key (diffusers' own Kandinsky conversion rules)."""
    k = key
    k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", k)
    k = re.sub(r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions.", k)
    k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)
    k = re.sub(
        r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m.group(1))}.", k
    )  # stored by level in the original, in running order in diffusers
    k = k.replace(".block.", ".resnets.").replace(".attn.", ".attentions.").replace(".upsample.", ".upsamplers.0.")
    k = k.replace(".mid.block_1.", ".mid_block.resnets.0.").replace(".mid.block_2.", ".mid_block.resnets.1.")
    k = k.replace(".mid.attn_1.", ".mid_block.attentions.0.")
    k = k.replace(".nin_shortcut.", ".conv_shortcut.").replace(".norm_out.", ".conv_norm_out.")
    if ".attentions." in k:
        norm = "spatial_norm" if k.startswith("decoder.") else "group_norm"
        k = re.sub(r"\.norm\.", f".{norm}.", k)
        k = re.sub(r"\.(q|k|v)\.", r".to_\1.", k).replace(".proj_out.", ".to_out.0.")
    return k


def to_diffusers_state_dict(sd: dict, num_levels: int) -> dict:
    out = {}
    for key, value in sd.items():
        new = to_diffusers_key(key, num_levels)
        if re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", new):
            value = value[:, :, 0, 0]  # 1x1 convs are linear layers in diffusers' Attention
        out[new] = value
    return out


def diffusers_twin(cfg: MoVQConfig):
    diffusers = pytest.importorskip("diffusers")
    levels = range(cfg.num_levels)
    return diffusers.VQModel(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_ch,
        down_block_types=tuple("AttnDownEncoderBlock2D" if cfg.has_attention(i) else "DownEncoderBlock2D" for i in levels),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if cfg.has_attention(i) else "UpDecoderBlock2D" for i in reversed(levels)
        ),
        block_out_channels=tuple(cfg.level_channels(i) for i in levels),
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        num_vq_embeddings=cfg.n_embed,
        vq_embed_dim=cfg.embed_dim,
        norm_num_groups=cfg.norm_groups,
        norm_type="spatial",
    ).eval()


@pytest.fixture(scope="module")
def twins():
    ours = randomised(TINY)
    ref = diffusers_twin(TINY)
    mapped = to_diffusers_state_dict(ours.state_dict(), TINY.num_levels)
    ref_keys = ref.state_dict()
    assert sorted(mapped) == sorted(ref_keys), "key mapping must cover both models exactly"
    for k, v in mapped.items():
        assert v.shape == ref_keys[k].shape, k
    ref.load_state_dict(mapped, strict=True)
    return ours, ref


def test_parity_with_diffusers_encode(twins):
    ours, ref = twins
    x = structured_image(32)
    with torch.no_grad():
        latents_ref = ref.encode(x).latents
        _, _, (_, _, idx_ref) = ref.quantize(latents_ref)
        latents = ours.encode_latents(x)
    torch.testing.assert_close(latents, latents_ref, atol=1e-5, rtol=1e-5)
    codes = ours.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    assert torch.equal(codes.flatten(), idx_ref.flatten())
    assert len(codes.unique()) > 4  # the comparison means something: many different codes


def test_parity_with_diffusers_decode(twins):
    ours, ref = twins
    torch.manual_seed(1)
    codes = torch.randint(0, TINY.n_embed, (2, 6, 10))  # not square: rows and columns stay apart
    with torch.no_grad():
        quant = ref.quantize.get_codebook_entry(codes.flatten(), (2, 6, 10, TINY.embed_dim))
        expected = ref.decode(quant, force_not_quantize=True).sample
    got = ours.decode(codes, max_batch=2)
    assert got.shape == (2, 3, 24, 40)
    assert (got - expected).abs().max().item() < 1e-4
    assert (ours.decode(codes, max_batch=1) - got).abs().max().item() < 1e-5  # one image at a time: same pixels


def test_chunked_attention_and_quantiser_are_exact(twins, monkeypatch):
    ours, _ = twins
    x = structured_image(32)
    codes = ours.encode(x)
    out = ours.decode(codes)
    monkeypatch.setattr(movq_mod, "ATTN_QUERY_CHUNK", 5)
    monkeypatch.setattr(movq_mod, "QUANT_POSITION_CHUNK", 7)
    assert torch.equal(ours.encode(x), codes)
    assert (ours.decode(codes) - out).abs().max().item() < 1e-5


# ----------------------------------------------------------------------------- quantiser


def test_quantiser_nearest_code_and_ties_to_lowest_index():
    q = movq_mod.VectorQuantizer(32, 4)
    torch.manual_seed(0)
    z = torch.randn(2, 4, 5, 3)
    brute = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 4), q.embedding.weight).argmin(1).view(2, 5, 3)
    assert torch.equal(q.codes(z), brute)
    with torch.no_grad():
        q.embedding.weight[7] = q.embedding.weight[3]  # duplicate entry: index 3 must win
        q.embedding.weight[20] = q.embedding.weight[3]
    z = q.embedding.weight[3].view(1, 4, 1, 1).expand(1, 4, 2, 2)
    assert q.codes(z).unique().tolist() == [3]


def test_straight_through_gradients_reach_the_encoder():
    model = MoVQ(MoVQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), n_embed=16)).train()
    recon, z, codes = model(structured_image(16, batch=1))
    loss = (recon - structured_image(16, batch=1)).pow(2).mean() + (model.embed(codes) - z.detach()).pow(2).mean()
    loss.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert model.quantize.embedding.weight.grad.abs().sum() > 0  # codebook loss
    assert codes.shape == (1, 8, 8)


# ----------------------------------------------------------------------------- round trips


def test_encode_decode_is_lossless_with_the_images_own_codebook():
    """Codebook = the image's own latents (plus distractors): encoding finds each position's own
    entry, and decoding the codes gives exactly the unquantised reconstruction."""
    cfg = MoVQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,), n_embed=200)
    model = randomised(cfg, seed=3)
    x = structured_image(16, batch=1)
    with torch.no_grad():
        z = model.encode_latents(x)  # (1, 4, 8, 8): 64 positions
        own = z.permute(0, 2, 3, 1).reshape(-1, 4)
        perm = torch.randperm(cfg.n_embed)[: own.shape[0]]
        model.quantize.embedding.weight.mul_(10).add_(20)  # distractors, far from every latent
        model.quantize.embedding.weight[perm] = own
        expected = model.decode_latents(z)
    codes = model.encode(x)
    assert torch.equal(codes.flatten(), perm)
    assert (model.decode(codes) - expected).abs().max().item() < 1e-5


PALETTE = torch.tensor([[0.8, -0.6, 0.1], [-0.7, 0.5, 0.9], [0.2, 0.9, -0.8], [-0.4, -0.9, -0.3]])


def pass_through_movq() -> MoVQ:
    """A tiny MoVQ whose weights are set by hand to act like a trained one on flat colour blocks:
    every residual branch is off (conv2 and proj_out zero), the encoder carries each channel
    through (conv_in, 2x2 average downsampling, shortcut, norm_out, conv_out), and the decoder
    paints each code's colour through SpatialNorm's conv_b (its GroupNorm scaled to zero) and a
    conv_out fitted exactly to the palette. So decode reproduces images and encode recovers codes."""
    cfg = MoVQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,), n_embed=32)
    model = MoVQ(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        enc = model.encoder
        for c in range(3):
            enc.conv_in.weight[c, c, 1, 1] = 1.0
            enc.conv_out.weight[c, 2 * c, 1, 1] = 1.0
            model.quant_conv.weight[c, c] = 1.0
        for c in range(32):
            enc.down[0].downsample.conv.weight[c, c, :2, :2] = 0.25
            enc.down[1].block[0].nin_shortcut.weight[2 * c, c] = 1.0  # one colour per norm group
        enc.norm_out.weight.fill_(1.0)
        # The codebook: the palette's latents, then distractors far away.
        latents = model.encode_latents(flat_blocks(torch.arange(4).view(1, 2, 2).repeat(1, 2, 2), block=2))
        book = model.quantize.embedding.weight
        book.copy_(torch.randn(book.shape) * 3 + 8)
        for k in range(4):
            book[k] = latents[0, :, k // 2, k % 2]
        # Decoder: pixel = A silu(e + 1) + a0 per code vector e, with A, a0 solved so that each palette code gives its colour.
        dec = model.decoder
        for c in range(3):  # the latents' 4th channel is always 0 here
            dec.norm_out.conv_b.weight[c, c] = 1.0
        dec.norm_out.conv_b.bias[:3] = 1.0
        feats = torch.nn.functional.silu(book[:4, :3] + 1.0)
        design = torch.cat([feats, torch.ones(4, 1)], 1)  # (4 codes, 3 features + bias)
        solution = torch.linalg.solve(design, PALETTE)  # (4, 3)
        dec.conv_out.weight[:, :3, 1, 1] = solution[:3].t()
        dec.conv_out.bias.copy_(solution[3])
    return model


def flat_blocks(code_grid: torch.Tensor, block: int) -> torch.Tensor:
    """(B, h, w) palette indices -> (B, 3, h*block, w*block) image of flat colour blocks."""
    img = PALETTE[code_grid].permute(0, 3, 1, 2)
    return img.repeat_interleave(block, 2).repeat_interleave(block, 3)


def test_round_trips_on_structured_images():
    model = pass_through_movq()
    grid = torch.arange(4).view(2, 2).repeat_interleave(3, 0).repeat_interleave(3, 1)[None]  # 6x6 quadrants
    x = flat_blocks(grid, block=2)
    codes = model.encode(x)
    assert torch.equal(codes, grid)  # encode finds the palette codes
    assert (model.decode(codes) - x).abs().max().item() < 1e-4  # encode -> decode reproduces the image
    # decode -> encode keeps codes on a rearranged structure (same colour counts: the encoder's
    # GroupNorm statistics, which a flat-colour model cannot factor out, stay those it was set for)
    shuffled = grid.flatten()[torch.randperm(36, generator=torch.Generator().manual_seed(0))].view(1, 6, 6)
    assert not torch.equal(shuffled, grid)
    assert torch.equal(model.encode(model.decode(shuffled)), shuffled)


# ----------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def small():
    return randomised(MoVQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,), n_embed=16), seed=5)


def codes_for(model: MoVQ) -> torch.Tensor:
    return torch.arange(12).view(1, 3, 4) % model.num_codes


def test_lightning_checkpoint_with_training_keys(small, tmp_path):
    path = tmp_path / "movqgan_270M.ckpt"
    sd = dict(small.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(3)
    sd["loss.perceptual_loss.net.lin0.model.1.weight"] = torch.zeros(2)
    sd["ema_decoder.conv_out.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd, "epoch": 4, "global_step": 1000, "pytorch-lightning_version": "1.6.0"}, path)
    loaded = MoVQ.from_pretrained(path)
    assert loaded.cfg == small.cfg
    assert torch.equal(loaded.decode(codes_for(small)), small.decode(codes_for(small)))
    assert not any(k.startswith("loss.") for k in loaded.state_dict())
    # a plain state dict (what the reference's torch.load + load_state_dict expects) and the folder form
    torch.save(small.state_dict(), tmp_path / "plain.ckpt")
    assert torch.equal(MoVQ.from_pretrained(tmp_path / "plain.ckpt").decode(codes_for(small)), small.decode(codes_for(small)))
    (tmp_path / "plain.ckpt").unlink()
    assert MoVQ.from_pretrained(tmp_path).cfg == small.cfg  # folder holding movqgan_270M.ckpt


def test_safetensors_conversion_and_loading(small, tmp_path):
    src = tmp_path / "movqgan.ckpt"
    torch.save({"state_dict": {**small.state_dict(), "loss.logvar": torch.zeros(())}}, src)
    dst = tmp_path / "out" / "movq.safetensors"
    cfg = convert_ckpt_to_safetensors(src, dst)
    assert cfg == small.cfg
    from safetensors.torch import load_file

    assert sorted(load_file(dst)) == sorted(small.state_dict())  # training keys dropped
    for where in (dst, dst.parent):
        loaded = MoVQ.from_pretrained(where)
        assert torch.equal(loaded.decode(codes_for(small)), small.decode(codes_for(small)))


def test_dtype_and_codebook_precision(small, tmp_path):
    torch.save(small.state_dict(), tmp_path / "m.ckpt")
    half = MoVQ.from_pretrained(tmp_path / "m.ckpt", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.quantize.embedding.weight.dtype == torch.float32
    assert torch.equal(half.quantize.embedding.weight, small.quantize.embedding.weight)  # not rounded to bf16
    out = half.decode(codes_for(small))
    assert out.dtype == torch.bfloat16
    assert (out.float() - small.decode(codes_for(small))).abs().max().item() < 0.1
    assert half.encode(structured_image(16, batch=1)).dtype == torch.long


def test_truncated_files_are_clear_errors(small, tmp_path):
    torch.save(small.state_dict(), tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt.*truncated"):
        MoVQ.from_pretrained(tmp_path / "cut.ckpt")
    convert_ckpt_to_safetensors(tmp_path / "full.ckpt", tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated"):
        MoVQ.from_pretrained(tmp_path / "cut.safetensors")


def test_wrong_shape_missing_and_unknown_keys(small, tmp_path):
    sd = dict(small.state_dict())
    key = "decoder.up.0.block.1.conv1.weight"
    bad = {**sd, key: torch.zeros(32, 32, 1, 1)}
    torch.save(bad, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError, match=rf"shape\.ckpt.*wrong shapes: {re.escape(key)}"):
        MoVQ.from_pretrained(tmp_path / "shape.ckpt")
    missing = {k: v for k, v in sd.items() if k != "decoder.norm_out.conv_b.bias"}
    torch.save(missing, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match=r"missing 1 keys: decoder\.norm_out\.conv_b\.bias"):
        MoVQ.from_pretrained(tmp_path / "missing.ckpt")
    torch.save({**sd, "transformer.wte.weight": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight"):
        MoVQ.from_pretrained(tmp_path / "other.ckpt")
    torch.save({**sd, "quantize.embedding.weight": torch.zeros(16, 5)}, tmp_path / "dim.ckpt")
    with pytest.raises(CheckpointError, match=r"dim\.ckpt"):
        MoVQ.from_pretrained(tmp_path / "dim.ckpt")


class Payload:
    """Unpickling this would call os.system and create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_run(small, tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(small.state_dict()), "hyper_parameters": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"Refusing to load .*evil\.ckpt.*(?s:safetensors)"):
        MoVQ.from_pretrained(path)
    with pytest.raises(CheckpointError, match="Refusing"):
        convert_ckpt_to_safetensors(path, tmp_path / "evil.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


def test_repo_id_goes_through_the_hub_download(small, tmp_path, monkeypatch):
    torch.save(small.state_dict(), tmp_path / "movqgan_270M.ckpt")
    calls = []

    def fake_download(repo_id, filename, cache_dir=None):
        calls.append((repo_id, filename, cache_dir))
        return tmp_path / filename

    monkeypatch.setattr(movq_mod, "download_file", fake_download)
    assert MoVQ.from_pretrained("ai-forever/MoVQGAN", cache_dir="c").cfg == small.cfg
    assert calls == [("ai-forever/MoVQGAN", "movqgan_270M.ckpt", "c")]
    with pytest.raises(CheckpointError, match="neither an existing file"):
        MoVQ.from_pretrained(str(tmp_path / "nope.ckpt"))


def test_release_config_is_inferred_from_shapes():
    with torch.device("meta"):
        model = MoVQ(MoVQConfig())  # the 270M release shape, no memory
    sd = model.state_dict()
    cfg = MoVQConfig.from_state_dict(sd)
    assert cfg == MoVQConfig()
    assert sum(v.numel() for v in sd.values()) == pytest.approx(270.7e6, rel=1e-3)
    assert (model.downsample_factor, model.num_codes, model.embed_dim) == (8, 16384, 4)


def test_check_compatible_and_input_errors(small):
    small.check_compatible(16)
    with pytest.raises(ValueError, match="16 codes.*8192"):
        small.check_compatible(8192)
    with pytest.raises(ValueError, match="downsamples by 2"):
        small.check_compatible(16, downsample_factor=8)
    with pytest.raises(ValueError, match="multiples of 2"):
        small.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        small.encode(torch.full((1, 3, 16, 16), 200.0))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        small.decode(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        small.decode(torch.zeros(2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- pixels


def test_pil_tensor_conversions():
    torch.manual_seed(0)
    arr = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    img = Image.fromarray(arr.numpy())
    t = pil_to_tensor(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    torch.testing.assert_close(t, arr.permute(2, 0, 1).float() / 255 * 2 - 1)
    assert np.array_equal(np.asarray(tensor_to_pil(t)), arr.numpy())  # exact 8-bit round trip
    out = tensor_to_pil(torch.tensor([-1.5, -1.0, 0.0, 0.003, 1.0, 2.0]).view(1, 1, 6).expand(3, 1, 6))
    assert np.asarray(out)[0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]  # round() then clamp
    assert len(tensor_to_pil(torch.zeros(2, 3, 4, 4))) == 2


def test_transparency_is_blended_onto_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 128)])  # fully transparent red, half-transparent blue
    t = pil_to_tensor(rgba)
    expected = Image.new("RGB", (2, 1), (255, 255, 255))
    expected.paste(rgba, mask=rgba.split()[3])  # Lumina's to_rgb_if_rgba
    torch.testing.assert_close(t, pil_to_tensor(expected))
    assert t[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert pil_to_tensor(Image.new("L", (3, 2), 0)).shape == (3, 2, 3)


def test_center_crop_follows_the_reference_steps():
    torch.manual_seed(0)
    img = Image.fromarray(torch.randint(0, 256, (600, 1000, 3), dtype=torch.uint8).numpy())
    out = center_crop(img, 256, 256)
    # 1000x600 -> halve once (both sides >= 512) -> 500x300 -> bicubic to cover 256x256: 427x256 -> centre
    step = img.resize((500, 300), Image.BOX).resize((427, 256), Image.BICUBIC)
    assert out.size == (256, 256)
    assert np.array_equal(np.asarray(out), np.asarray(step.crop((85, 0, 341, 256))))
    tall = center_crop(Image.new("RGB", (300, 500)), 512, 256)  # upscaling to cover, no halving
    assert tall.size == (512, 256)


def test_save_pretrained_keeps_what_shapes_cannot_tell(tmp_path):
    cfg = MoVQConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32, n_embed=8, norm_groups=8)
    model = randomised(cfg, seed=2)
    model.save_pretrained(tmp_path / "movq.safetensors")
    loaded = MoVQ.from_pretrained(tmp_path)
    assert loaded.cfg == cfg  # 8 norm groups and the nominal resolution came from the metadata
    codes = torch.arange(6).view(1, 2, 3)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_decoder_that_disagrees_with_the_encoder_is_refused(small, tmp_path):
    other = MoVQ(MoVQConfig(ch=64, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(128,), n_embed=16))
    mixed = {k: v for k, v in small.state_dict().items() if not k.startswith("decoder.")}
    mixed.update({k: v for k, v in other.state_dict().items() if k.startswith("decoder.")})
    torch.save(mixed, tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match=r"mixed\.ckpt do not fit a consistent MoVQGAN.*wrong shapes: decoder\."):
        MoVQ.from_pretrained(tmp_path / "mixed.ckpt")


def test_convert_command(small, tmp_path, capsys):
    from uni1_core.cli import main

    torch.save({"state_dict": dict(small.state_dict())}, tmp_path / "in.ckpt")
    assert main(["convert-movq", str(tmp_path / "in.ckpt"), str(tmp_path / "out.safetensors")]) == 0
    assert MoVQ.from_pretrained(tmp_path / "out.safetensors").cfg == small.cfg
    torch.save({"x": Payload(tmp_path / "ran")}, tmp_path / "evil.ckpt")
    assert main(["convert-movq", str(tmp_path / "evil.ckpt"), str(tmp_path / "evil.safetensors")]) != 0
    assert "Refusing" in capsys.readouterr().err and not (tmp_path / "ran").exists()


def with_stored_config(model: MoVQ, path: Path, **changes) -> Path:
    """model saved with a config entry edited to `changes` (a hostile or careless file)."""
    import json

    from safetensors.torch import save_file

    cfg = {**json.loads(json.dumps(model.cfg.__dict__)), **changes}
    save_file(dict(model.state_dict()), str(path), metadata={"format": "pt", "movq_config": json.dumps(cfg)})
    return path


@pytest.mark.parametrize("changes, words", [
    ({"num_res_blocks": 1000000}, r"does not match its weights: num_res_blocks=1000000 \(weights: 1\)"),
    ({"ch_mult": [1, 2, 2, 2, 2, 2]}, r"does not match its weights: ch_mult=\(1, 2, 2, 2, 2, 2\)"),
    ({"resolution": 512}, r"does not match its weights: attention at levels"),
    ({"norm_groups": 0}, r"unusable movq_config .*norm_groups.*positive integers"),
    ({"ch": "wide"}, r"unusable movq_config .*'ch': 'wide'"),
    ({"bogus": 1}, r"unusable movq_config .*bogus"),
])
def test_a_stored_config_is_checked_against_the_weights_before_building(small, tmp_path, changes, words):
    """Issue 16: a config of a million blocks used to build them all (minutes, gigabytes)."""
    import time

    path = with_stored_config(small, tmp_path / "movq.safetensors", **changes)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=words):
        MoVQ.from_pretrained(path)
    assert time.perf_counter() - start < 1.0


def test_a_stored_config_that_is_not_an_object_is_refused(small, tmp_path):
    from safetensors.torch import save_file

    save_file(dict(small.state_dict()), str(tmp_path / "m.safetensors"), metadata={"movq_config": "[]"})
    with pytest.raises(CheckpointError, match=r"m\.safetensors has an unusable movq_config"):
        MoVQ.from_pretrained(tmp_path / "m.safetensors")


def test_config_rejects_zero_and_negative_sizes():
    for bad in ({"norm_groups": 0}, {"ch": -4}, {"ch_mult": ()}, {"num_res_blocks": 0}, {"n_embed": True}):
        with pytest.raises(ValueError, match="positive integers"):
            MoVQConfig(**bad)
    with pytest.raises(ValueError, match="norm_eps"):
        MoVQConfig(norm_eps=-1.0)


def test_default_source_prefers_the_folders_own_file(tmp_path):
    assert movq_mod.default_source(tmp_path) == "ai-forever/MoVQGAN"
    (tmp_path / "movqgan_270M.ckpt").write_bytes(b"")
    (tmp_path / "movq.safetensors").write_bytes(b"")
    assert movq_mod.default_source(tmp_path) == str(tmp_path / "movq.safetensors")
