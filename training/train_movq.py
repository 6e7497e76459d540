"""Train the demo model's image tokenizer: a MoVQGAN of the release's architecture, tiny channels.

    python -m training.train_movq --out uni1_core/demo_model/movq.safetensors

Same network as ai-forever/MoVQGAN (uni1_core.movq.MoVQ: encoder, nearest-code quantiser,
SpatialNorm decoder; downsampling 8, embed_dim 4) with 32 base channels, one residual block per
level and a 512-entry codebook. The world is flat shapes on smooth backgrounds, so a pixel loss
(L1 + L2) is enough: no perceptual or adversarial terms, which would need weights we cannot ship.

Two phases: most steps on random 32x32 crops (4x cheaper; the network is convolutional), then
full 64x64 images so that the decoder's attention sees whole scenes. Codes that fall out of use
are restarted on random encoder outputs, the usual cure for a collapsing codebook.
Deterministic for a fixed seed and thread count.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

# Idle OpenMP threads must sleep, not spin: on a shared 2-core machine a spinning thread steals
# the core its partner needs (measured here: 2 spinning threads ran 10x slower than 1 thread,
# 2 passive threads 2x faster). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F

from training.world import random_scene, render_batch
from bench.geneval import detect
from uni1_core.movq import MoVQ, MoVQConfig, tensor_to_pil

DEMO_MOVQ = MoVQConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(32,), n_embed=512, embed_dim=4)


def image_pool(n: int, size: int, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    return torch.from_numpy(render_batch([random_scene(rng) for _ in range(n)], size))


def random_crops(pool: torch.Tensor, batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(pool), (batch,), generator=gen)
    size = pool.shape[-1]
    out = []
    for i in idx.tolist():
        # on whole code cells, as the objects are: a crop keeps every object aligned to the codes
        y, x = (8 * torch.randint(0, (size - crop) // 8 + 1, (2,), generator=gen)).tolist()
        img = pool[i, :, y : y + crop, x : x + crop]
        if torch.rand((), generator=gen) < 0.5:  # mirror left-right: shapes stay upright
            img = img.flip(-1)
        out.append(img)
    return torch.stack(out)


def restart_dead_codes(movq: MoVQ, usage: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> int:
    """Move codebook entries unused since the last restart onto random current encoder outputs."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(len(flat), (len(dead),), generator=gen)
    with torch.no_grad():
        movq.quantize.embedding.weight[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=gen)
    return len(dead)


@torch.no_grad()
def init_codebook(movq: MoVQ, pool: torch.Tensor, gen: torch.Generator) -> None:
    """Codebook entries start on encoder outputs, not on a unit Gaussian far away from them."""
    z = movq.encode_latents(random_crops(pool, 64, 32, gen))
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    movq.quantize.embedding.weight.copy_(flat[torch.randint(len(flat), (movq.num_codes,), generator=gen)])


def train_step(movq, opt, images, beta=0.25):
    z = movq.encode_latents(images)
    z_q, codes = movq.quantize(z)  # straight-through
    recon = movq.decode_latents(z_q)
    e = movq.embed(codes)
    loss_pix = F.l1_loss(recon, images) + F.mse_loss(recon, images)
    loss_vq = F.mse_loss(e, z.detach()) + beta * F.mse_loss(z, e.detach())
    loss = loss_pix + loss_vq
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss_pix.item(), codes, z


@torch.no_grad()
def detection_agreement(movq: MoVQ, n: int = 200, seed: int = 999) -> tuple[float, float]:
    """Share of held-out scenes whose objects (shape, colour) the evaluator finds unchanged after an
    encode/decode round trip, and the round trip's PSNR: the tokenizer's fitness for mini-GenEval."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    images = torch.from_numpy(render_batch(scenes, 64))
    recon = movq.decode(movq.encode(images), max_batch=64).clamp(-1, 1)
    psnr = 10 * math.log10(4.0 / F.mse_loss(recon, images).item())
    same = 0
    for s, img in zip(scenes, tensor_to_pil(recon)):
        same += sorted((d.shape, d.colour) for d in detect(img)) == sorted((o.shape, o.colour) for o in s.objects)
    return same / n, psnr


def save(movq: MoVQ, path: Path) -> None:
    movq.save_pretrained(path)  # original key names plus the config as metadata


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("uni1_core/demo_model/movq.safetensors"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", type=int, default=3000, help="rendered 64x64 scenes to crop from")
    p.add_argument("--crop-steps", type=int, default=600)
    p.add_argument("--full-steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--restart-every", type=int, default=100)
    p.add_argument("--init", type=Path, default=None, help="continue from these MoVQ weights (a second stage)")
    p.add_argument("--stop-at", type=int, default=None, help="stop (and save) after this step, schedule unchanged")
    p.add_argument("--decoder-only", action="store_true",
                   help="train only the decoder (with --init): the codes of every image stay exactly those of "
                        "--init, so a transformer trained on them meanwhile stays valid")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    pool = image_pool(args.pool, 64, args.seed)
    print(f"rendered {len(pool)} scenes in {time.time() - t0:.0f}s", flush=True)

    movq = MoVQ(DEMO_MOVQ)
    print(f"MoVQ {DEMO_MOVQ}: {sum(p.numel() for p in movq.parameters()) / 1e6:.2f}M parameters", flush=True)
    if args.init is not None:
        movq.load_state_dict(MoVQ.from_pretrained(args.init).state_dict())
        movq.requires_grad_(True).train()
    else:
        init_codebook(movq, pool, gen)
    if args.decoder_only:
        if args.init is None:
            p.error("--decoder-only needs --init")
        for module in (movq.encoder, movq.quant_conv, movq.quantize):
            module.requires_grad_(False)
        probe = pool[:64]
        probe_codes = movq.encode(probe)
    opt = torch.optim.Adam([q for q in movq.parameters() if q.requires_grad], lr=args.lr, betas=(0.9, 0.99))
    total = args.crop_steps + args.full_steps
    usage = torch.zeros(DEMO_MOVQ.n_embed, dtype=torch.long)
    for step in range(total if args.stop_at is None else min(total, args.stop_at)):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / total)) if step > 50 else args.lr * (step + 1) / 51
        for group in opt.param_groups:
            group["lr"] = lr
        full = step >= args.crop_steps
        images = random_crops(pool, args.batch // 2 if full else args.batch, 64 if full else 32, gen)
        loss, codes, z = train_step(movq, opt, images)
        usage += torch.bincount(codes.flatten(), minlength=DEMO_MOVQ.n_embed)
        if (step + 1) % args.restart_every == 0:
            late = step >= total - 2 * args.restart_every
            restarted = 0 if late or args.decoder_only else restart_dead_codes(movq, usage, z, gen)
            print(
                f"step {step + 1}/{total} pixel loss {loss:.4f} codes used {(usage > 0).sum().item()} "
                f"restarted {restarted} lr {lr:.2e} {time.time() - t0:.0f}s",
                flush=True,
            )
            usage.zero_()
        if (step + 1) % 100 == 0 or step + 1 == total or step + 1 == args.stop_at:
            save(movq.eval(), args.out)
            movq.train()
    movq.eval()
    if args.decoder_only:
        assert torch.equal(movq.encode(probe), probe_codes), "decoder-only training changed the codes"
    agree, psnr = detection_agreement(movq)
    print(f"done in {time.time() - t0:.0f}s: round-trip PSNR {psnr:.1f} dB, evaluator agreement {agree:.3f}", flush=True)
    save(movq, args.out)
    reloaded = MoVQ.from_pretrained(args.out)  # the shipped file must load through the product's loader
    assert reloaded.cfg == DEMO_MOVQ, (reloaded.cfg, DEMO_MOVQ)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
