"""The token layout of Lumina-mGPT 2.0: prompt text, image header, code rows, end of image.

A text-to-image request of W x H pixels is one sequence:

    [BOS] encode("Generate an image of {W}x{H} according to the following prompt:\\n{prompt}<reserved08706>")
    <racm3:break> <grid H/32> <grid W/32>                      (the image header)
    row 0: W/8 codes, <reserved08799>  ...  row H/8-1: W/8 codes, <reserved08799>
    <eoss>

Everything after the header is the *code stream*: position k = 0 .. rows*(cols+1) holds a
code, a row end or (last) the end of image. Row ends and the end of image are fixed by the
size, so the sampler forces them; for image-conditioned tasks the condition's rows are forced
too (see `ImageGrid.prefix_codes`). The unconditional branch of classifier-free guidance sees
only the header and the stream, with its own positions from 0, as in the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The release's image vocabulary: MoVQGAN code c is vocabulary id 155000 + c. A model folder
# may override both numbers (and its sizes) in config.json under "uni1" (the demo model does).
RELEASE_CODE_OFFSET = 155000
RELEASE_NUM_CODES = 16384

IMAGE_START = "<racm3:break>"
IMAGE_END = "<eoss>"
ROW_END = "<reserved08799>"
TURN_END = "<reserved08706>"
PIXELS_PER_GRID_UNIT = 32   # the grid tokens count 32-pixel units
PIXELS_PER_CODE = 8         # MoVQGAN downsamples by 8
I2I_PANELS = 2              # an image-conditioned image stacks two panels: the condition above, the answer below

T2I_TEMPLATE = "Generate an image of {w}x{h} according to the following prompt:\n{prompt}"
# The reference's generate.py writes {w}x{h} (TRAIN.md writes {h}x{w}); square sizes are
# unaffected and we follow generate.py for the others.
I2I_TEMPLATE = ("Generate a dual-panel image of {w}x{h} where the <upper half> displays a <{task}>, "
                "while the <lower half> retains the original image for direct visual comparison:\n{prompt}")
# The Omni model's reference generates two-panel images of 512 x 1024 (the condition is the
# upper 512 x 512). A model folder may list others in config.json "uni1": {"i2i_sizes": ...}.
I2I_SIZES = [(512, 1024)]
I2I_TASKS = {
    "depth": "depth map",
    "canny": "canny edge map",
    "subject": "Bubbly and effervescent with a sparkling allure.",
}


def grid_token_name(n: int) -> str:
    return f"<reserved{8800 + n:05d}>"


class SizeError(ValueError):
    pass


def supported_sizes(target: int = 768, unit: int = PIXELS_PER_GRID_UNIT, max_ratio: float = 4.0):
    """The training sizes of the release: the reference walks the boundary of
    (W/unit)*(H/unit) <= (target/unit)^2 with aspect ratio <= max_ratio (73 sizes for 768)."""
    budget = (target // unit) ** 2
    sizes, wp, hp = [], budget, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * unit, hp * unit))
        if (hp + 1) * wp <= budget:
            hp += 1
        else:
            wp -= 1
    return sizes


def check_size(width: int, height: int, sizes) -> None:
    """Refuse a size the model was not trained on, naming the nearest supported ones."""
    sizes = [tuple(s) for s in sizes]
    if (width, height) in sizes:
        return
    nearest = sorted(sizes, key=lambda s: (abs(s[0] / s[1] - width / height), abs(s[0] * s[1] - width * height)))
    shown = ", ".join(f"{w}x{h}" for w, h in nearest[:6])
    raise SizeError(f"unsupported resolution {width}x{height}: this model generates {len(sizes)} sizes; "
                    f"the nearest are {shown}")


@dataclass(frozen=True)
class ImageVocab:
    """Vocabulary ids of the image codes and of the structural tokens, looked up by name."""
    code_offset: int
    num_codes: int
    image_start: int
    image_end: int
    row_end: int
    turn_end: int
    grid_ids: dict = field(default_factory=dict)  # n (32-pixel units) -> id of <reserved{8800+n}>

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int, uni1_config: dict | None = None) -> "ImageVocab":
        uni1_config = uni1_config or {}
        offset = int(uni1_config.get("image_token_offset", RELEASE_CODE_OFFSET))
        num_codes = int(uni1_config.get("num_image_codes", RELEASE_NUM_CODES))
        if offset + num_codes > vocab_size:
            raise ValueError(f"image codes {offset}..{offset + num_codes - 1} do not fit the model's "
                             f"vocabulary of {vocab_size} ids: wrong 'uni1' section in config.json?")

        def need(name):
            i = tokenizer.token_to_id(name)
            if i is None:
                raise ValueError(f"the tokenizer has no {name!r} token: not a Lumina-mGPT 2.0 tokenizer")
            return i

        grid = {}
        for n in range(1, 129):
            i = tokenizer.token_to_id(grid_token_name(n))
            if i is not None:
                grid[n] = i
        return cls(offset, num_codes, need(IMAGE_START), need(IMAGE_END), need(ROW_END), need(TURN_END), grid)

    def code_to_id(self, codes):
        return codes + self.code_offset

    def id_to_code(self, ids):
        return ids - self.code_offset

    def is_code(self, ids):
        return (ids >= self.code_offset) & (ids < self.code_offset + self.num_codes)

    def grid_token(self, pixels: int) -> int:
        n = pixels // PIXELS_PER_GRID_UNIT
        if pixels % PIXELS_PER_GRID_UNIT or n not in self.grid_ids:
            raise SizeError(f"{pixels} px has no grid token (needs a multiple of {PIXELS_PER_GRID_UNIT})")
        return self.grid_ids[n]


@dataclass(frozen=True)
class ImageGrid:
    """The code stream of one W x H image, optionally with forced leading rows (a condition)."""
    width: int
    height: int
    prefix_codes: torch.Tensor | None = None  # (r, cols) codes of the first r rows, forced

    def __post_init__(self):
        if self.width % PIXELS_PER_GRID_UNIT or self.height % PIXELS_PER_GRID_UNIT:
            raise SizeError(f"{self.width}x{self.height}: sides must be multiples of {PIXELS_PER_GRID_UNIT}")
        if self.prefix_codes is not None:
            r, c = self.prefix_codes.shape
            if c != self.cols or r >= self.rows:
                raise SizeError(f"condition grid {r}x{c} does not fit an image of {self.rows}x{self.cols} codes")

    @property
    def rows(self) -> int:
        return self.height // PIXELS_PER_CODE

    @property
    def cols(self) -> int:
        return self.width // PIXELS_PER_CODE

    @property
    def stream_len(self) -> int:
        return self.rows * (self.cols + 1) + 1

    @property
    def num_codes(self) -> int:
        return self.rows * self.cols

    def header_ids(self, vocab: ImageVocab) -> list[int]:
        return [vocab.image_start, vocab.grid_token(self.height), vocab.grid_token(self.width)]

    def cell(self, k: int):
        """(row, col) of stream position k, or None for a row end / the end of image."""
        row, col = divmod(k, self.cols + 1)
        return (row, col) if col < self.cols and row < self.rows else None

    def code_positions(self) -> torch.Tensor:
        """(num_codes,) long: the stream positions of the codes, row by row (no row ends)."""
        k = torch.arange(self.rows * (self.cols + 1))
        return k[k % (self.cols + 1) < self.cols]

    def forced_ids(self, vocab: ImageVocab) -> torch.Tensor:
        """(stream_len,) long: the id forced at each stream position, -1 where the model chooses."""
        forced = torch.full((self.rows, self.cols + 1), -1, dtype=torch.long)
        forced[:, self.cols] = vocab.row_end
        if self.prefix_codes is not None:
            r = self.prefix_codes.shape[0]
            forced[:r, :self.cols] = vocab.code_to_id(self.prefix_codes.long())
        return torch.cat([forced.flatten(), torch.tensor([vocab.image_end])])

    def stream_from_codes(self, codes: torch.Tensor, vocab: ImageVocab) -> torch.Tensor:
        """(rows, cols) codes -> the full (stream_len,) id stream, row ends and end of image included."""
        if tuple(codes.shape) != (self.rows, self.cols):
            raise ValueError(f"expected a {self.rows}x{self.cols} code grid, got {tuple(codes.shape)}")
        ids = torch.cat([vocab.code_to_id(codes.long()),
                         torch.full((self.rows, 1), vocab.row_end, dtype=torch.long)], dim=1)
        return torch.cat([ids.flatten(), torch.tensor([vocab.image_end])])

    def codes_from_stream(self, stream, vocab: ImageVocab) -> torch.Tensor:
        """A finished stream (with or without the header) -> the (rows, cols) code grid.
        Checks every structural token, so a malformed sequence is an error, not a shifted image."""
        stream = torch.as_tensor(stream, dtype=torch.long).flatten()
        if stream.numel() == self.stream_len + 3:
            stream = stream[3:]
        if stream.numel() != self.stream_len:
            raise ValueError(f"a {self.width}x{self.height} image has {self.stream_len} stream tokens, "
                             f"got {stream.numel()}")
        grid = stream[:-1].view(self.rows, self.cols + 1)
        if stream[-1] != vocab.image_end or (grid[:, -1] != vocab.row_end).any():
            raise ValueError("the stream's row ends / end of image are not where the size puts them")
        codes = grid[:, :-1]
        if not vocab.is_code(codes).all():
            raise ValueError("the stream holds a non-image token inside a row")
        return vocab.id_to_code(codes)


def t2i_prompt_ids(tokenizer, prompt: str, width: int, height: int, max_tokens: int | None = None) -> list[int]:
    """The conditional prompt up to (not including) the image header. With `max_tokens`, the
    tokenizer stops soon after that many ids (the result is then longer than max_tokens but not
    complete): enough for `check_positions` to refuse a huge prompt without tokenizing all of it."""
    text = T2I_TEMPLATE.format(w=width, h=height, prompt=prompt) + TURN_END
    return [tokenizer.bos_id] + _encode(tokenizer, text, max_tokens)


def i2i_prompt_ids(tokenizer, prompt: str, width: int, height: int, task: str,
                   max_tokens: int | None = None) -> list[int]:
    """Omni image-conditioned prompt: the condition is the upper half, the model writes the lower."""
    if task not in I2I_TASKS:
        raise ValueError(f"unknown image-conditioned task {task!r}; choose one of {sorted(I2I_TASKS)}")
    text = I2I_TEMPLATE.format(w=width, h=height, task=I2I_TASKS[task], prompt=prompt) + TURN_END
    return [tokenizer.bos_id] + _encode(tokenizer, text, max_tokens)


def _encode(tokenizer, text: str, max_tokens: int | None) -> list[int]:
    return tokenizer.encode(text) if max_tokens is None else tokenizer.encode(text, max_tokens=max_tokens)


class PromptTooLong(ValueError):
    """The prompt and the image do not fit the model's positions."""


def position_limit(config) -> int:
    """Positions a model can address: `max_position_embeddings`, stretched by a linear or
    dynamic RoPE scaling factor where the config declares one."""
    limit = int(config.max_position_embeddings)
    if getattr(config, "rope_scaling", None) in ("linear", "dynamic"):
        limit = int(limit * max(float(config.rope_factor), 1.0))
    return limit


def check_positions(prompt_tokens: int, grid: ImageGrid, limit: int, what: str = "the prompt",
                    at_least: bool = False) -> None:
    """Refuse a prompt that, with the image header and the image's stream, needs more positions
    than the model has. Call it before any allocation: the KV cache is sized by this length
    (times the rows of the batch), so an unchecked 100k-character prompt asked for gigabytes.
    `prompt_tokens` counts the whole prompt row (BOS and template included); `at_least`: it is
    a lower bound (the tokenizer stopped early)."""
    image = 3 + grid.stream_len
    if prompt_tokens + image > limit:
        room = limit - image
        fix = (f"shorten it to at most {room} tokens" if room > 0 else
               "no prompt fits: choose a smaller size")
        count = f"{'at least ' if at_least else ''}{prompt_tokens} tokens"
        raise PromptTooLong(f"{what} is {count} (template included) and a {grid.width}x{grid.height} "
                            f"image takes {image} more, but this model has {limit} positions "
                            f"(max_position_embeddings): {fix}")


def sequence_length(width: int, height: int) -> int:
    """Tokens after the prompt: header (3) + rows * (cols + 1) + end of image (768x768 -> 9316)."""
    return 3 + ImageGrid(width, height).stream_len
