"""The demo model's training inputs: the corrupted codes of the last schedule."""

import torch

from training.train_transformer import corrupt_codes, sequences
from uni1_core.pipeline import Uni1Pipeline
from uni1_core.sequence import ImageGrid


def test_corruption_touches_only_input_codes_at_its_rate():
    vocab, grid = Uni1Pipeline.from_pretrained("demo").vocab, ImageGrid(64, 64)
    torch.manual_seed(0)
    codes = torch.randint(0, vocab.num_codes, (64, grid.rows, grid.cols))
    prompts = [[11, 12, 13, 14]] * len(codes)
    ids = sequences(prompts, codes, grid, vocab)
    start = len(prompts[0]) + 3
    assert torch.equal(corrupt_codes(ids, start, 0.0, vocab, grid), ids)
    out = corrupt_codes(ids, start, 0.3, vocab, grid)
    assert torch.equal(ids, sequences(prompts, codes, grid, vocab))          # the targets stay
    is_code = torch.zeros(ids.shape[1], dtype=torch.bool)
    is_code[[start + k for k in range(grid.stream_len) if grid.cell(k) is not None]] = True
    assert torch.equal(out[:, ~is_code], ids[:, ~is_code])                   # prompt, header, row ends
    assert ((out[:, is_code] >= vocab.code_offset) & (out[:, is_code] < vocab.code_offset + vocab.num_codes)).all()
    changed = (out != ids)[:, is_code].float().mean().item()
    assert 0.2 < changed < 0.3                     # 30 %, less the draws that hit the same code
