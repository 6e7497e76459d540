"""Golden tests of the Lumina-mGPT 2.0 sequence layout (spec: lumina_mgpt2.md section 4)."""
import pytest
import torch

from uni1_core.sequence import (I2I_TASKS, ImageGrid, ImageVocab, SizeError, check_size, grid_token_name,
                                i2i_prompt_ids, sequence_length, supported_sizes, t2i_prompt_ids)


class NamedTokens:
    """Just enough of a tokenizer for layout tests: the release's ids for the named tokens,
    and one id per character for text (so the prompt length is predictable)."""
    bos_id = 151643  # Qwen-family: no BOS, the wrapper prepends eos

    def __init__(self):
        self.ids = {"<racm3:break>": 151665, "<eoss>": 151666, "<reserved08799>": 151670,
                    "<reserved08706>": 151577}
        for n in range(1, 49):
            self.ids[grid_token_name(n)] = 151671 + n - 1

    def token_to_id(self, name):
        return self.ids.get(name)

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            for name, tid in self.ids.items():
                if text.startswith(name, i):
                    out.append(tid)
                    i += len(name)
                    break
            else:
                out.append(ord(text[i]))
                i += 1
        return out


VOCAB_SIZE = 172_032


@pytest.fixture
def vocab():
    return ImageVocab.from_tokenizer(NamedTokens(), VOCAB_SIZE)


def test_release_vocab(vocab):
    assert vocab.code_offset == 155000 and vocab.num_codes == 16384
    assert (vocab.image_start, vocab.image_end, vocab.row_end) == (151665, 151666, 151670)
    assert vocab.grid_token(768) == NamedTokens().ids["<reserved08824>"]
    assert vocab.code_to_id(torch.tensor(16383)) == 155000 + 16383


def test_vocab_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="do not fit"):
        ImageVocab.from_tokenizer(NamedTokens(), 160000)


def test_supported_sizes_match_the_release():
    sizes = supported_sizes()
    assert len(sizes) == 73
    assert sizes[0] == (1536, 384) and sizes[-1] == (384, 1536) and (768, 768) in sizes
    assert all(w % 32 == 0 and h % 32 == 0 and (w // 32) * (h // 32) <= 576 for w, h in sizes)


def test_unsupported_size_names_the_nearest():
    with pytest.raises(SizeError, match=r"unsupported resolution 770x768.*768x768"):
        check_size(770, 768, supported_sizes())
    check_size(768, 768, supported_sizes())  # a supported size passes


def test_768_square_golden(vocab):
    grid = ImageGrid(768, 768)
    assert (grid.rows, grid.cols) == (96, 96)
    assert sequence_length(768, 768) == 9316
    forced = grid.forced_ids(vocab)
    assert forced.numel() == 96 * 97 + 1
    row_ends = (forced == vocab.row_end).nonzero().flatten()
    assert row_ends.tolist() == [k for k in range(96 * 97) if (k + 1) % 97 == 0]
    assert forced[-1] == vocab.image_end and (forced[:-1] != vocab.image_end).all()
    n24 = NamedTokens().ids["<reserved08824>"]
    assert grid.header_ids(vocab) == [151665, n24, n24]


def test_non_square_golden(vocab):
    # 1024 wide x 512 high: height first in the header, 64 rows of 128 codes.
    grid = ImageGrid(1024, 512)
    tok = NamedTokens()
    assert grid.header_ids(vocab) == [151665, tok.ids["<reserved08816>"], tok.ids["<reserved08832>"]]
    assert (grid.rows, grid.cols, grid.stream_len) == (64, 128, 64 * 129 + 1)
    assert sequence_length(1024, 512) == 3 + 64 * 129 + 1
    assert grid.cell(0) == (0, 0) and grid.cell(128) is None and grid.cell(129) == (1, 0)
    ids = t2i_prompt_ids(tok, "a cat", 1024, 512)
    text = "Generate an image of 1024x512 according to the following prompt:\na cat"
    assert ids == [tok.bos_id] + [ord(c) for c in text] + [151577]


def test_stream_round_trip_and_checks(vocab):
    grid = ImageGrid(64, 96)
    codes = torch.randint(0, 16384, (grid.rows, grid.cols), generator=torch.Generator().manual_seed(0))
    stream = grid.stream_from_codes(codes, vocab)
    forced = grid.forced_ids(vocab)
    assert ((forced < 0) | (forced == stream)).all()
    assert torch.equal(grid.codes_from_stream(stream, vocab), codes)
    header = torch.tensor(grid.header_ids(vocab))
    assert torch.equal(grid.codes_from_stream(torch.cat([header, stream]), vocab), codes)
    broken = stream.clone()
    broken[grid.cols] = vocab.code_offset  # a code where the row end belongs
    with pytest.raises(ValueError, match="row ends"):
        grid.codes_from_stream(broken, vocab)
    with pytest.raises(ValueError, match="stream tokens"):
        grid.codes_from_stream(stream[:-1], vocab)


def test_condition_rows_are_forced(vocab):
    cond = torch.arange(4 * 8).view(4, 8)
    grid = ImageGrid(64, 64, prefix_codes=cond)
    forced = grid.forced_ids(vocab).view(-1)[:-1].view(8, 9)
    assert torch.equal(forced[:4, :8], cond + vocab.code_offset)
    assert (forced[4:, :8] == -1).all()
    with pytest.raises(SizeError):
        ImageGrid(64, 64, prefix_codes=torch.zeros(4, 7, dtype=torch.long))


def test_i2i_prompt(vocab):
    tok = NamedTokens()
    ids = i2i_prompt_ids(tok, "a dog", 512, 1024, "depth")
    assert ids[0] == tok.bos_id and ids[-1] == 151577
    assert "depth map" in "".join(chr(i) for i in ids[1:-1] if i < 0x110000)
    with pytest.raises(ValueError, match="unknown image-conditioned task"):
        i2i_prompt_ids(tok, "a dog", 512, 1024, "sketch")
    assert set(I2I_TASKS) == {"depth", "canny", "subject"}


@pytest.mark.parametrize("size", [(64, 64), (32, 64), (768, 512)])
def test_code_positions_are_the_cells_of_the_stream(size):
    grid = ImageGrid(*size)
    expected = [k for k in range(grid.stream_len) if grid.cell(k) is not None]
    assert grid.code_positions().tolist() == expected and len(expected) == grid.num_codes
