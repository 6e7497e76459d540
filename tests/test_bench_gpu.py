"""bench/gpu.py --tiny: the GPU benchmark's code, run on the CPU in seconds, so it stays alive."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_tiny_bench_reports_every_window_context_and_projection(tmp_path):
    bench = load_bench()
    out = tmp_path / "gpu.json"
    assert bench.main(["--tiny", "--no-compile", "--seeds", "1", "--json", str(out)]) == 0
    import json
    report = json.loads(out.read_text())
    rows = {(r["mode"], r["context"], r["path"]) for r in report["rows"]}
    assert rows == {(w.mode, c, "eager") for w in bench.WINDOWS for c in (64, 256, 1000)}
    for r in report["rows"]:
        assert r["ms"] > 0 and r["bound_ms"] > 0 and abs(r["ratio"] - r["ms"] / r["bound_ms"]) < 1e-9
    assert {p["mode"] for p in report["projections"]} == {"ar", "sjd", "sjd_coupled"}
    assert report["forwards_per_token"]["ar"] == 1.0
    assert report["forwards_per_token"]["sjd_coupled"] < report["forwards_per_token"]["sjd"] < 1.0
    assert {e["mode"] for e in report["end_to_end"]} == {"ar", "sjd_coupled"}


def test_tree_window_and_bandwidth_arithmetic():
    bench = load_bench()
    w = bench.Window("sjd_coupled", 4, 2)
    assert w.width == 6 and w.tree == [-1, 0, 1, 2, 0, 0]
    cfg, _ = bench.tiny_shape()
    model = bench.build_model(cfg, bench.torch.device("cpu"), bench.torch.float32, None)
    weights = sum(p.numel() * 4 for n, p in model.state_dict().items() if "embed_tokens" not in n)
    kv = 2 * cfg.num_hidden_layers * 2 * (100 + 1) * cfg.num_key_value_heads * cfg.head_dim * 4
    assert bench.bytes_per_forward(model, 100, bench.Window("ar", 1, 0)) == weights + kv
    # projection: a constant step time gives forwards x step
    assert abs(bench.project_image_seconds({1: 0.5, 10: 0.5}, 0.25, 100) - 25 * 0.5) < 1e-9
