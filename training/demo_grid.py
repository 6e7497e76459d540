"""Render the README's grid of demo-model outputs, each under its prompt.

    python -m training.demo_grid --out docs/demo_grid.png

Every picture is the demo model's first sample (seed 0, sjd_coupled, the planner on, the
folder's recommended sampling settings) for its prompt: nothing is picked by hand. Images are scaled up 4x with nearest-neighbour so the 64x64
pixels stay honest.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from uni1_core.movq import tensor_to_pil
from uni1_core.pipeline import Uni1Pipeline

PROMPTS = (
    "two red circles to the left of a blue square",
    "three yellow triangles",
    "a green square above an orange circle",
    "a purple circle and a blue triangle",
    "a photo of four orange squares",
    "a blue circle below a red triangle",
    "a large green circle",
    "a purple square to the right of a yellow circle",
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--out", type=Path, default=Path("docs/demo_grid.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--columns", type=int, default=4)
    args = p.parse_args(argv)

    pipe = Uni1Pipeline.from_pretrained(args.model)
    movq = pipe.load_movq()
    policy = pipe.default_policy   # includes the folder's recommended settings ("uni1.default_policy")
    scale, label_h, pad = 4, 44, 8
    cell_w = 64 * scale
    rows = (len(PROMPTS) + args.columns - 1) // args.columns
    grid = Image.new("RGB", (args.columns * (cell_w + pad) + pad, rows * (cell_w + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, prompt in enumerate(PROMPTS):
        gen = pipe.sample(prompt, seeds=[args.seed], mode="sjd_coupled", policy=policy)
        image = tensor_to_pil(movq.decode(gen.codes).clamp(-1, 1))[0]
        x = pad + (i % args.columns) * (cell_w + pad)
        y = pad + (i // args.columns) * (cell_w + label_h + pad)
        grid.paste(image.resize((cell_w, cell_w), Image.NEAREST), (x, y))
        draw.multiline_text((x, y + cell_w + 4), "\n".join(textwrap.wrap(prompt, 40)), fill="black", font=font)
        print(f"{prompt!r} -> {gen.conditioning!r}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
