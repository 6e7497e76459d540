"""Encode / decode time and peak memory of the MoVQGAN 270M shape (random weights).

    python bench/movq.py                          # CPU: fp32, 256 only (a few minutes on 2 cores)
    python bench/movq.py --sizes 256,512,768 --dtype bf16
    python bench/movq.py --device cuda            # GPU: bf16, 256, 512 and 768

Peak memory is what the call adds on top of the loaded model: on GPU from
torch.cuda.max_memory_allocated, on CPU from the process's peak resident size (Linux VmHWM,
reset before each call through /proc/self/clear_refs; elsewhere ru_maxrss, which never resets).

Measured on a shared 2-core AMD EPYC (avx512_bf16), torch 2.13 CPU; times are noisy (other
jobs were running), peaks are not. Peak MiB is above the loaded weights (1033 MiB fp32, 517 bf16):

    fp32   256: encode  54 s   331 MiB   decode  56 s   450 MiB
           512:        127 s  1280 MiB          190 s  1921 MiB
           768:        245 s  2880 MiB          487 s  4004 MiB
    bf16   256:         15 s   231 MiB           21 s   291 MiB
           512:         41 s   640 MiB          112 s  1024 MiB
           768:        111 s  1449 MiB          159 s  2395 MiB

So a 768 x 768 bf16 decode needs about 2.9 GiB with the weights: no tiling is needed for an
8 GB GPU (the attention is already split into query chunks, the quantiser into position blocks).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uni1_core.movq import MoVQ, MoVQConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak bytes allocated during a `with` block, above what was allocated when it began."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.reset = True
            except OSError:
                self.reset = False
            self.base = (read_status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            hwm = read_status_kib("VmHWM") if self.reset else None
            self.peak = (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 - self.base
        return False


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, mem.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--sizes", default=None, help="comma-separated square sizes; default 256 on CPU, 256,512,768 on GPU")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    sizes = [int(s) for s in (args.sizes or ("256,512,768" if device.type == "cuda" else "256")).split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    with torch.device("meta"):
        model = MoVQ(MoVQConfig())
    model = model.to_empty(device=device)
    with torch.no_grad():  # random weights at the scale of a default init: the work is the same
        for p in model.parameters():
            p.normal_(0, 0.02) if p.ndim > 1 else p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
    model = model.to(dtype).eval().requires_grad_(False)
    model.quantize.float()  # as from_pretrained: distances in fp32

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"MoVQGAN 270M shape ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, random weights), "
          f"{name}, {str(dtype).removeprefix('torch.')}, batch 1, torch {torch.__version__}")
    if device.type == "cuda":  # first calls pick kernels; keep them out of the numbers
        model.decode(model.encode(torch.zeros(1, 3, 64, 64, device=device)))
    print(f"{'size':>9} | {'encode s':>9} | {'encode peak MiB':>15} | {'decode s':>9} | {'decode peak MiB':>15}")
    print("-" * 71)
    for s in sizes:
        images = torch.rand(1, 3, s, s, device=device) * 2 - 1
        codes, t_enc, m_enc = timed(lambda: model.encode(images), device)
        out, t_dec, m_dec = timed(lambda: model.decode(codes), device)
        assert codes.shape == (1, s // 8, s // 8) and out.shape == (1, 3, s, s)
        print(f"{s:>4}x{s:<4} | {t_enc:>9.2f} | {m_enc / 2**20:>15.0f} | {t_dec:>9.2f} | {m_dec / 2**20:>15.0f}", flush=True)


if __name__ == "__main__":
    main()
