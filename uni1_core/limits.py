"""What one generation request may ask for, checked before anything is allocated.

A request names a device, seeds, a batch, a draft window and branches. Each has a range the
sampler can serve; outside it the answer is a `RequestError` that says what to change, raised
before the model, the KV cache or the prompt rows exist (so never a traceback, a long hang or
an out-of-memory after minutes). The prompt's length is checked against the model's positions
in `sequence.check_positions`. (No torch import at module level: the command line checks its
arguments with these before paying for torch.) docs/limits.md lists every limit and why it is there.

Seeds: the ComfyUI seed widget offers 0 .. 2^64-1 and the sampler's counter-based random numbers
hash an int64, so a seed is read modulo 2^64 as a two's-complement int64 (`seed_to_int64`):
seeds below 2^63 are unchanged (and so are their images), 2^63 .. 2^64-1 become negative, and
-1 and 2^64-1 are the same seed, as the widget's wrap-around makes them.
"""
from __future__ import annotations

MAX_BATCH = 64          # images per call: each adds a conditional (and a CFG) row to every forward
MAX_BRANCHES = 64       # alternatives per window; each adds a KV-cache slot per row
MAX_REGIONS = 16        # regional guidance: each planned box adds a row to every forward
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1     # the int64 range joined with the widget's uint64


class RequestError(ValueError):
    """A request outside what the sampler serves; the message names the setting and the fix."""


def seed_to_int64(seed) -> int:
    """A seed of -2^63 .. 2^64-1 as the int64 the sampler hashes (two's complement)."""
    if isinstance(seed, bool):
        raise RequestError(f"seed {seed!r} is not a whole number")
    if not isinstance(seed, int):
        try:
            if int(seed) != seed:
                raise ValueError
            seed = int(seed)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(f"seed {seed!r} is not a whole number") from None
    if not SEED_MIN <= seed <= SEED_MAX:
        raise RequestError(f"seed {seed} is out of range: seeds are whole numbers from {SEED_MIN} to "
                           f"{SEED_MAX} (2^64 - 1, the node's largest)")
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def batch_seeds(seed: int, batch: int) -> list[int]:
    """The seeds of a batch: seed, seed + 1, ... modulo 2^64, as the sampler node's widget
    counts (so -1 and 2^64 - 1 give the same images, and a batch may run past 2^64 - 1)."""
    check_batch(batch)
    seed_to_int64(seed)                                   # the range check
    return [(seed + i) % (1 << 64) for i in range(batch)]


def check_batch(batch: int) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise RequestError(f"batch {batch} is out of range: ask for 1 to {MAX_BATCH} images per call "
                           "(every image adds rows to every forward and to the KV cache; run "
                           "several calls for more)")


def check_regions(boxes: int) -> None:
    if boxes > MAX_REGIONS:
        raise RequestError(f"regional guidance takes at most {MAX_REGIONS} boxes (each adds a row to every "
                           f"forward); this plan has {boxes}. Lower the counts, or turn regional off")


def clamp_window(window: int | None, stream_len: int) -> int | None:
    """The draft window, at most the image's stream: a longer one only allocates slots that can
    never hold a draft (the sampler never scores past the end of the image), so clamping it
    changes no token. None: the mode's default."""
    check_window(window)
    return None if window is None else min(int(window), stream_len)


def check_window(window: int | None) -> None:
    if window is not None and window < 1:
        raise RequestError(f"window {window} is out of range: a draft window is 1 or more tokens "
                           "(leave it unset for the mode's default)")


def check_branches(branches: int | None, num_codes: int | None = None) -> None:
    if branches is None:
        return
    top = MAX_BRANCHES if num_codes is None else min(MAX_BRANCHES, num_codes - 1)
    if not 0 <= branches <= top:
        raise RequestError(f"branches {branches} is out of range: 0 to {top} alternatives per window "
                           "(the default, 4, gives most of the gain; each one costs a cache slot per row)")


def resolve_device(device=None):
    """A device name or object -> torch.device, checked to exist here: a missing CUDA is named as
    such (loading weights onto it failed deep inside the reader, as a "corrupt file")."""
    import torch
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RequestError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise RequestError(f"device {device!r}: this PyTorch {torch.__version__} was built without "
                               "CUDA. Use --device cpu, or install a CUDA build of PyTorch")
        if not torch.cuda.is_available():
            raise RequestError(f"device {device!r}: PyTorch sees no CUDA GPU (no driver, or "
                               "CUDA_VISIBLE_DEVICES hides them). Use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise RequestError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to "
                               f"cuda:{count - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RequestError(f"device {device!r}: Apple's MPS backend is not available here. Use --device cpu")
        return dev
    backend = getattr(torch, dev.type, None)
    if dev.type != "meta" and backend is not None and getattr(backend, "is_available", lambda: False)():
        return dev
    raise RequestError(f"device {device!r} is not available here: use cpu, cuda, cuda:N or mps")


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure, in any of the forms torch and Python report it."""
    import torch
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "Failed to allocate" in text)
