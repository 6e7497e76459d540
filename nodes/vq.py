"""Uni1 VQ Decode (tokens -> IMAGE) and Uni1 VQ Encode (IMAGE -> condition tokens for Omni tasks).

ComfyUI's IMAGE is (B, H, W, C) float32 in 0..1, channels last; MoVQ works on (B, 3, H, W) in
-1..1. The two conversions below are the only place that layout changes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..uni1_core.sequence import I2I_PANELS, PIXELS_PER_CODE, PIXELS_PER_GRID_UNIT
from . import runtime
from .handles import CATEGORY, UNI1_TOKENS, UNI1_VQ, Tokens

# The two-panel image is width x I2I_PANELS*height and its sides count grid units, so the
# condition's height need only be a multiple of this.
CONDITION_HEIGHT_STEP = PIXELS_PER_GRID_UNIT // I2I_PANELS
MAX_CONDITION_WIDTH, MAX_CONDITION_HEIGHT = 2048, 1024


def movq_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> ComfyUI IMAGE (B, H, W, 3) float32 in [0, 1]."""
    image = ((pixels.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous()
    return image.to(runtime.intermediate_device())


def image_to_movq(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] -> (B, 3, H, W) in [-1, 1]. Alpha is blended onto
    white and a grey image repeated to RGB, as the reference does with PIL's convert('RGB')."""
    if image.dim() != 4:
        raise ValueError(f"IMAGE must be (batch, height, width, channels), got shape {tuple(image.shape)}")
    if 0 in image.shape[:3]:
        raise ValueError(f"the image is empty ({image.shape[0]} images of {image.shape[2]}x{image.shape[1]} "
                         f"pixels): connect a loaded image with at least one pixel")
    image = image.float()
    channels = image.shape[-1]
    if channels == 4:
        rgb, alpha = image[..., :3], image[..., 3:]
        image = rgb * alpha + (1 - alpha)
    elif channels == 1:
        image = image.repeat(1, 1, 1, 3)
    elif channels != 3:
        raise ValueError(f"IMAGE has {channels} channels; expected 1, 3 or 4")
    return image.clamp(0, 1).permute(0, 3, 1, 2) * 2 - 1


def center_crop(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, height, width): scale so the image covers the target, crop the centre."""
    _, _, h, w = pixels.shape
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if (new_w, new_h) != (w, h):
        # antialias keeps downscaling from aliasing (the reference halves with a box filter first)
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic", align_corners=False,
                               antialias=True).clamp(-1, 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return pixels[:, :, top:top + height, left:left + width]


@torch.inference_mode()
def codes_to_pil(movq, codes: torch.Tensor, full_rows: int | None = None) -> Image.Image:
    """Decode (1, r, cols) codes to a PIL image, padded with grey to `full_rows` rows so a preview
    keeps the final size while rows appear."""
    device = next(movq.parameters()).device
    pixels = movq.decode(codes.to(device))[0]
    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    if full_rows is not None and codes.shape[1] < full_rows:
        pad = np.full((full_rows * PIXELS_PER_CODE - array.shape[0], array.shape[1], 3), 128, np.uint8)
        array = np.concatenate([array, pad], axis=0)
    return Image.fromarray(array)


class Uni1VQDecode:
    DESCRIPTION = ("Turns image tokens into pixels with the MoVQGAN decoder. For an Omni two-panel result, "
                   "'generated' returns only the lower half the model wrote; 'full' returns both panels.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The decoded images, (batch, height, width, 3) in 0..1.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": (UNI1_TOKENS, {"tooltip": "From Uni1 SJD Sampler (or VQ Encode, to check a round trip)."}),
            "vq": (UNI1_VQ, {"tooltip": "From Uni1 VQ Loader; must match the model that drew the tokens."}),
            "part": (["generated", "full"], {"default": "generated",
                                             "tooltip": "For image-conditioned results: the generated lower "
                                                        "panel only, or both panels. Text-to-image: same."}),
        }}

    def decode(self, tokens, vq, part="generated"):
        codes = tokens.codes
        if part == "generated" and tokens.condition_rows:
            codes = codes[:, tokens.condition_rows:]
        if codes.numel() == 0:
            raise ValueError(f"the tokens hold no codes to decode (shape {tuple(codes.shape)}, part {part!r}): "
                             f"connect the tokens of a Uni1 SJD Sampler, or choose part 'full'")
        movq = vq.ready()
        num_codes = getattr(movq, "num_codes", None)
        if num_codes is not None and int(codes.max()) >= num_codes:
            raise ValueError(f"the tokens hold code {int(codes.max())} but this VQ has {num_codes} codes: "
                             f"load the VQ that belongs to the model that drew them")
        with torch.inference_mode():
            pixels = movq.decode(codes.to(vq.device))
        return (movq_to_image(pixels),)


class Uni1VQEncode:
    DESCRIPTION = ("Turns an image into MoVQ tokens to condition the Omni model (depth, canny, subject tasks). "
                   "The image is scaled to cover width x height and centre-cropped; the sampler then draws a "
                   "two-panel image of width x 2*height whose upper half is this image.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNI1_TOKENS,)
    RETURN_NAMES = ("condition",)
    OUTPUT_TOOLTIPS = ("Condition tokens; connect to the sampler's condition input.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The conditioning image (a batch gives one condition per image)."}),
            "vq": (UNI1_VQ, {"tooltip": "From Uni1 VQ Loader."}),
            "width": ("INT", {"default": 512, "min": PIXELS_PER_GRID_UNIT, "max": MAX_CONDITION_WIDTH,
                              "step": PIXELS_PER_GRID_UNIT,
                              "tooltip": "Condition width in pixels (multiple of 32). Omni reference: 512."}),
            "height": ("INT", {"default": 512, "min": PIXELS_PER_GRID_UNIT, "max": MAX_CONDITION_HEIGHT,
                               "step": CONDITION_HEIGHT_STEP,
                               "tooltip": "Condition height (the upper panel); the result is twice as tall. "
                                          "Omni reference: 512."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width, height):
        if not (isinstance(width, int) and isinstance(height, int)):
            return True   # linked from another node: checked when the node runs
        unit, step = PIXELS_PER_GRID_UNIT, CONDITION_HEIGHT_STEP
        if not (unit <= width <= MAX_CONDITION_WIDTH and step <= height <= MAX_CONDITION_HEIGHT):
            return (f"condition size {width}x{height} is out of range (width {unit}..{MAX_CONDITION_WIDTH}, "
                    f"height {step}..{MAX_CONDITION_HEIGHT})")
        if width % unit or (I2I_PANELS * height) % unit:
            return (f"width {width} must be a multiple of {unit} and height {height} a multiple of {step} (the "
                    f"two-panel image is width x {I2I_PANELS}*height and its sides count {unit}-pixel units)")
        return True

    def encode(self, image, vq, width, height):
        message = self.VALIDATE_INPUTS(int(width), int(height))
        if message is not True:
            raise ValueError(message)
        pixels = center_crop(image_to_movq(image), int(width), int(height))
        movq = vq.ready()
        with torch.inference_mode():
            codes = movq.encode(pixels.to(vq.device))
        return (Tokens(codes, kind="condition"),)
