"""The reasoner on tiny random Qwen2 / Qwen3 folders written by `transformers`: greedy generation
equals `transformers`' generate token for token; a random model's answer is unreadable, so
the reasoner retries once and falls back to the rules, visibly, in the API and the CLI."""
import json

import pytest
import torch

from tests.tiny_model_folder import build as build_image_model
from tests.tiny_reasoner_folder import build
from uni1_core.chat import ChatFormat
from uni1_core.cli import main
from uni1_core.plan import make_plan
from uni1_core.reasoner import SYSTEM_PROMPT, Reasoner
from uni1_core.textgen import TextSettings

transformers = pytest.importorskip("transformers")
PROMPT = "two red circles to the left of a blue square"


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def folder(request, tmp_path_factory):
    return build(tmp_path_factory.mktemp(request.param) / request.param, request.param)


@pytest.fixture(scope="module")
def reasoner(folder):
    return Reasoner.from_pretrained(folder, dtype="float32", device="cpu")


def test_loads_with_its_chat_format(folder, reasoner):
    family = json.loads((folder / "config.json").read_text())["model_type"]
    assert reasoner.generator.chat_format == (ChatFormat.qwen3() if family == "qwen3" else ChatFormat.qwen2())


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PROMPT}],
    [{"role": "user", "content": "a confused grizzly bear in calculus class"}],
])
def test_greedy_generation_equals_transformers_generate(folder, reasoner, messages):
    gen = reasoner.generator
    prompt_ids = gen.tokenizer.encode(gen.chat_format.render(messages, add_generation_prompt=True))
    ours, finished, _ = gen.generate_ids(prompt_ids, TextSettings(temperature=0, max_new_tokens=48))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=48, do_sample=False,
                          eos_token_id=sorted(gen.stop_ids), pad_token_id=gen.tokenizer.token_to_id("<|endoftext|>"))
    theirs = out[0, len(prompt_ids):].tolist()
    assert ours == theirs
    assert finished == (theirs[-1] in gen.stop_ids)
    assert len(set(ours)) >= 2         # not a single repeated token (tiny random models loop soon)


def test_sampling_is_reproducible_by_seed(reasoner):
    messages = [{"role": "user", "content": PROMPT}]
    runs = [reasoner.generator.complete(messages, TextSettings(temperature=1.0, max_new_tokens=24,
                                                               max_thinking_tokens=0, seed=s)).ids
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_random_model_falls_back_to_the_rules_after_one_retry(reasoner):
    steps = []
    result = reasoner.plan(PROMPT, TextSettings(max_new_tokens=24, max_thinking_tokens=8),
                           on_progress=lambda d, t: steps.append((d, t)))
    assert result.fell_back and len(result.attempts) == 2
    assert result.plan == make_plan(PROMPT)
    assert "could not be read twice" in result.messages[-1]
    assert steps and all(d <= t for d, t in steps)


def test_cli_plan_with_a_reasoner_prints_the_fallback(folder, capsys):
    rc = main(["plan", "--prompt", PROMPT, "--reasoner", str(folder), "--reasoner-tokens", "16",
               "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0
    assert json.loads(captured.out) == json.loads(make_plan(PROMPT).to_json())
    assert "rules (fallback)" in captured.err and "detailed prompt:" in captured.err


def test_cli_generate_with_a_reasoner(folder, tmp_path, capsys):
    image_model = build_image_model(tmp_path / "image_model")
    stats = tmp_path / "stats.json"
    rc = main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "img.png"), "--model", str(image_model),
               "--reasoner", str(folder), "--reasoner-tokens", "12", "--no-think", "--mode", "ar",
               "--device", "cpu", "--stats-json", str(stats), "--quiet"])
    assert rc == 0 and (tmp_path / "img.png").is_file()
    data = json.loads(stats.read_text())["reasoner"]
    assert data["source"] == "rules (fallback)" and len(data["answer_tokens"]) == 2
    assert "could not be read twice" in data["messages"][-1]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_reasoner_is_the_quantized_model_with_a_full_head(folder, reasoner, mode):
    """quantize= gives the image model's weight quantisation with every head row kept (text
    sampling reads them all) and the embedding as it is: the logits are those of the float
    model with each linear weight replaced by its dequantised copy, and stay near the float
    model's (a tiny random model is int4's worst case: 0.39-0.52 relative error measured)."""
    from uni1_core.model import Uni1Model
    from uni1_core.quantize import Int4Linear, Int8Linear, decoder_linears
    from uni1_core.quantized_load import load_quantized

    quantized = Reasoner.from_pretrained(folder, dtype="float32", device="cpu", quantize=mode).generator.model
    kind = Int8Linear if mode == "int8" else Int4Linear
    assert isinstance(quantized.lm_head, kind) and quantized.lm_head.out_features == quantized.config.vocab_size
    assert isinstance(quantized.model.embed_tokens, torch.nn.Embedding)
    dequantised = Uni1Model.from_pretrained(folder, dtype="float32")
    for name in decoder_linears(dequantised) + ["lm_head"]:
        dequantised.get_submodule(name).weight = torch.nn.Parameter(quantized.get_submodule(name).dequantize())
    same = load_quantized(folder, mode, dtype="float32", lm_head="full", embedding="keep")
    x = torch.randint(0, quantized.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, ref, want = quantized(x), reasoner.generator.model(x), dequantised(x)
        assert torch.equal(got, same(x))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < (0.1 if mode == "int8" else 0.8), rel


def test_unknown_quantize_setting_is_refused(folder):
    from uni1_core.quantize import QuantizationError
    with pytest.raises(QuantizationError, match="'int3' is unknown"):
        Reasoner.from_pretrained(folder, dtype="float32", quantize="int3")
