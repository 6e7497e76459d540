"""Text generation speed of the reasoner against `transformers`' generate, same model, same run.

    python bench/reasoner.py                    # tiny random Qwen3 and Qwen2 folders, CPU, 1 thread
    python bench/reasoner.py --tokens 256 --threads 2

Each row: one greedy generation of up to --tokens new tokens after the reasoner's real prompt
(our system prompt + a user prompt), median of --repeat runs, prefill included. Both sides must
produce the same tokens (checked; the run stops otherwise). The models are tiny and random, so
this measures per-token overhead (Python, kernel launches), not what a 1.7B model does on a GPU.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.tiny_reasoner_folder import build  # noqa: E402
from uni1_core.reasoner import SYSTEM_PROMPT, Reasoner  # noqa: E402
from uni1_core.textgen import TextSettings  # noqa: E402

PROMPT = "a confused grizzly bear in calculus class"


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench(folder: Path, tokens: int, repeat: int) -> dict:
    import transformers

    reasoner = Reasoner.from_pretrained(folder, dtype="float32", device="cpu")
    gen = reasoner.generator
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PROMPT}]
    prompt = gen.tokenizer.encode(gen.chat_format.render(messages, add_generation_prompt=True))
    settings = TextSettings(temperature=0, max_new_tokens=tokens)
    ours_s, (ours, _, _) = timed(lambda: gen.generate_ids(prompt, settings), repeat)

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    pad = gen.tokenizer.token_to_id("<|endoftext|>")

    def hf_generate():
        with torch.no_grad():
            return hf.generate(ids, max_new_tokens=tokens, do_sample=False, eos_token_id=sorted(gen.stop_ids),
                               pad_token_id=pad)[0, len(prompt):].tolist()
    hf_s, theirs = timed(hf_generate, repeat)
    if ours != theirs:
        raise SystemExit(f"{folder.name}: the tokens differ from transformers' generate; no timing is reported")
    return {"prompt": len(prompt), "new": len(ours), "ours": len(ours) / ours_s, "hf": len(theirs) / hf_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, CPU, {args.threads} thread(s); "
          f"greedy, up to {args.tokens} new tokens, median of {args.repeat}")
    print(f"{'model':<8} {'prompt':>6} {'new':>4} {'uni1_core tok/s':>16} {'transformers tok/s':>19} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("qwen3", "qwen2"):
            r = bench(build(Path(tmp) / family, family), args.tokens, args.repeat)
            print(f"{family:<8} {r['prompt']:>6} {r['new']:>4} {r['ours']:>16.1f} {r['hf']:>19.1f} "
                  f"{r['ours'] / r['hf']:>5.2f}x")


if __name__ == "__main__":
    main()
