"""Resolving model folders and reading checkpoints: the good paths and every bad input.

No network: every hub call runs with HF_HUB_OFFLINE=1, against a cache folder laid out here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import uni1_core.checkpoint as checkpoint
import uni1_core.model as model_module
from tests.tiny_chameleon import make_reference
from uni1_core.checkpoint import (CheckpointError, download_file, list_safetensors_dir, load_pickle_checkpoint,
                                  load_safetensors_dir, resolve_model_dir)
from uni1_core.model import Uni1Model

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pristine")
    make_reference(folder, seed=3)
    return folder


@pytest.fixture
def ckpt(pristine, tmp_path):
    """A fresh copy of the sharded checkpoint, to break."""
    return shutil.copytree(pristine, tmp_path / "ckpt")


def shard_of(folder, key):
    return folder / json.loads((folder / INDEX).read_text())["weight_map"][key]


def rewrite_shard(folder, key, change):
    """Apply change(tensors) to the dict of the shard holding key, and write it back."""
    path = shard_of(folder, key)
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def edit_index(folder, change):
    index = json.loads((folder / INDEX).read_text())
    change(index["weight_map"])
    (folder / INDEX).write_text(json.dumps(index))


def forbid_reading(monkeypatch):
    """Fail the test if any tensor data is read: errors must come from headers alone."""
    def boom(*args, **kwargs):
        raise AssertionError("tensor data was read before the checkpoint was checked")
    monkeypatch.setattr(model_module, "read_tensors", boom)


# ---------------------------------------------------------------------------------------------
# Bad checkpoints: a clear error naming the file and the key, raised before any tensor is read

def test_missing_key(ckpt, monkeypatch):
    key = "model.layers.1.mlp.up_proj.weight"
    rewrite_shard(ckpt, key, lambda t: t.pop(key))
    edit_index(ckpt, lambda m: m.pop(key))
    forbid_reading(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{ckpt}.*lack '{key}'"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_index_names_a_key_its_shard_lacks(ckpt):
    key = "model.norm.weight"
    path = rewrite_shard(ckpt, key, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=f"'{key}' in {path}"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_wrong_shape(ckpt, monkeypatch):
    key = "model.layers.0.self_attn.k_proj.weight"
    path = rewrite_shard(ckpt, key, lambda t: t.__setitem__(key, torch.zeros(8, 32)))
    forbid_reading(monkeypatch)
    with pytest.raises(CheckpointError, match=rf"{path}: '{key}' has shape \(8, 32\), expected \(16, 32\)"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_wrong_qk_norm_shape_lists_both_layouts(ckpt):
    key = "model.layers.1.self_attn.q_norm.bias"
    rewrite_shard(ckpt, key, lambda t: t.__setitem__(key, torch.zeros(3, 8)))
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(3, 8\), expected \(4, 8\) or \(1, 8\)"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_unexpected_key(ckpt, monkeypatch):
    anchor = "model.layers.0.mlp.down_proj.weight"
    extra = "model.layers.0.mlp.extra_proj.weight"
    path = rewrite_shard(ckpt, anchor, lambda t: t.__setitem__(extra, torch.zeros(2)))
    edit_index(ckpt, lambda m: m.__setitem__(extra, path.name))
    forbid_reading(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{path} holds '{extra}'"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_truncated_shard(ckpt, monkeypatch):
    path = shard_of(ckpt, "lm_head.weight")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    forbid_reading(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{path} cannot be read.*truncated"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)
    path.write_bytes(data[:5])        # not even a header
    with pytest.raises(CheckpointError, match=f"{path} cannot be read"):
        list_safetensors_dir(ckpt)


def test_missing_shard(ckpt):
    path = shard_of(ckpt, "model.embed_tokens.weight")
    path.unlink()
    with pytest.raises(CheckpointError, match=f"{path} is missing"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_broken_index(ckpt):
    (ckpt / INDEX).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{ckpt / INDEX} is not a readable safetensors index"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_config_of_another_architecture(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{ckpt / 'config.json'}: config has model_type 'llama'"):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_config_that_does_not_match_the_weights(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="lack 'model.layers.2."):
        Uni1Model.from_pretrained(ckpt, dtype=torch.float32)


def test_empty_folder_and_folder_without_weights(tmp_path, pristine):
    with pytest.raises(CheckpointError, match=f"{tmp_path} has no config.json"):
        Uni1Model.from_pretrained(tmp_path)
    shutil.copy(pristine / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=f"{tmp_path} has no weights"):
        Uni1Model.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json is not readable JSON"):
        Uni1Model.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------
# Reading safetensors

def test_single_file_and_sharded_read_the_same(pristine, tmp_path):
    ref = make_reference(tmp_path, seed=3, max_shard_size="100MB")
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / INDEX).exists()
    single = load_safetensors_dir(tmp_path)
    sharded = load_safetensors_dir(pristine, dtype=torch.bfloat16)
    assert single.keys() == sharded.keys() == ref.state_dict().keys()
    for key, t in single.items():
        assert torch.equal(t, ref.state_dict()[key])
        assert sharded[key].dtype == torch.bfloat16 and torch.equal(sharded[key], t.to(torch.bfloat16))
    entries = list_safetensors_dir(pristine)
    assert entries["lm_head.weight"].shape == (96, 32) and entries["lm_head.weight"].dtype == "F32"
    ids = torch.randint(0, 96, (1, 6))
    torch.testing.assert_close(Uni1Model.from_pretrained(tmp_path, dtype=torch.float32)(ids),
                               Uni1Model.from_pretrained(pristine, dtype=torch.float32)(ids), atol=0, rtol=0)


def test_pickle_checkpoint(tmp_path):
    state = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3}
    torch.save(state, tmp_path / "ok.ckpt")
    loaded = load_pickle_checkpoint(tmp_path / "ok.ckpt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    torch.save({"obj": _Custom()}, tmp_path / "code.ckpt")
    with pytest.raises(CheckpointError, match=r"Refusing to load .*code\.ckpt"):
        load_pickle_checkpoint(tmp_path / "code.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pickle_checkpoint(tmp_path / "absent.ckpt")


class _Custom:
    pass


# ---------------------------------------------------------------------------------------------
# Resolving names: folders, "demo", Hugging Face repo ids (offline)

def test_local_folder_and_bad_names(pristine, tmp_path):
    assert resolve_model_dir(pristine) == pristine
    assert resolve_model_dir(str(pristine)) == pristine
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_dir(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_dir("./not/a/model")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file, not a model folder"):
        resolve_model_dir(tmp_path / "weights.safetensors")


def test_demo_name(pristine, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "DEMO_DIR", tmp_path / "demo_model")
    with pytest.raises(CheckpointError, match="demo model folder .*demo_model is missing"):
        resolve_model_dir("demo")
    monkeypatch.setattr(checkpoint, "DEMO_DIR", pristine)
    assert resolve_model_dir("demo") == pristine
    assert Uni1Model.from_pretrained("demo", dtype=torch.float32).config.vocab_size == 96


def test_hub_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="'nobody/no-such-model'.*HF_HUB_OFFLINE"):
        resolve_model_dir("nobody/no-such-model", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="'movqgan_270M.ckpt'.*'nobody/no-such-movq'.*HF_HUB_OFFLINE"):
        download_file("nobody/no-such-movq", "movqgan_270M.ckpt", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        Uni1Model.from_pretrained("nobody/no-such-model", cache_dir=tmp_path)


def test_hub_repo_from_cache_dir_offline(pristine, tmp_path, monkeypatch):
    """A repo already in the cache folder loads with HF_HUB_OFFLINE=1 (the hub's cache layout)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "models--tiny--chameleon"
    shutil.copytree(pristine, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_model_dir("tiny/chameleon", cache_dir=tmp_path)
    assert folder == repo_dir / "snapshots" / commit
    assert download_file("tiny/chameleon", "config.json", cache_dir=tmp_path) == folder / "config.json"
    ids = torch.randint(0, 96, (2, 5))
    torch.testing.assert_close(Uni1Model.from_pretrained("tiny/chameleon", dtype=torch.float32, cache_dir=tmp_path)(ids),
                               Uni1Model.from_pretrained(pristine, dtype=torch.float32)(ids), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Downloads fetch only what a model folder needs, the config first (issue 16)

def serve_repo(monkeypatch, folder, calls):
    """snapshot_download over the files of `folder`, honouring allow_patterns, into the cache."""
    import fnmatch

    import huggingface_hub

    def fake(repo_id, allow_patterns=None, cache_dir=None, local_files_only=False, **options):
        calls.append(list(allow_patterns))
        snapshot = Path(cache_dir) / repo_id.replace("/", "--")
        snapshot.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, snapshot / f.name)
        return str(snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)


def test_a_repo_is_fetched_config_first_then_only_the_named_shards(pristine, tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    for f in pristine.iterdir():
        shutil.copy(f, tmp_path / "repo" / f.name)
    (tmp_path / "repo" / "pytorch_model.bin").write_bytes(b"a pickle")
    (tmp_path / "repo" / "unrelated.safetensors").write_bytes(b"x")
    calls, seen = [], []
    serve_repo(monkeypatch, tmp_path / "repo", calls)
    folder = resolve_model_dir("tiny/chameleon", cache_dir=tmp_path / "cache", check_config=seen.append)
    assert calls[0] == ["config.json"] and seen == [folder / "config.json"]
    shards = sorted(set(json.loads((pristine / INDEX).read_text())["weight_map"].values()))
    assert sorted(calls[2]) == sorted(checkpoint.MODEL_METADATA_FILES + shards)
    assert not (folder / "pytorch_model.bin").exists() and not (folder / "unrelated.safetensors").exists()
    ids = torch.randint(0, 96, (1, 4))
    torch.testing.assert_close(Uni1Model.from_pretrained(folder, dtype=torch.float32)(ids),
                               Uni1Model.from_pretrained(pristine, dtype=torch.float32)(ids), atol=0, rtol=0)


def test_a_repo_of_another_model_type_costs_one_file(tmp_path, monkeypatch):
    import time
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "repo" / "model.safetensors").write_bytes(b"x" * 1000)
    calls = []
    serve_repo(monkeypatch, tmp_path / "repo", calls)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        resolve_model_dir("someone/llama", cache_dir=tmp_path / "cache",
                          check_config=model_module.ModelConfig.from_file)
    assert time.perf_counter() - start < 1.0
    assert calls == [["config.json"]]


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/abs/x.safetensors", "sub/x.safetensors",
                                   "model.bin", ".hidden.safetensors"])
def test_an_index_may_only_name_plain_safetensors_files(ckpt, shard):
    edit_index(ckpt, lambda wm: wm.update({next(iter(wm)): shard}))
    with pytest.raises(CheckpointError, match=r"not plain \*\.safetensors file names"):
        list_safetensors_dir(ckpt)


def test_a_text_file_is_not_reported_as_a_pickle_that_runs_code(tmp_path):
    import time
    from uni1_core.checkpoint import CheckpointError, load_pickle_checkpoint
    path = tmp_path / "movqgan_270M.ckpt"
    path.write_text("<html>404 Not Found</html>")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint.*starts with b'<h'.*download"):
        load_pickle_checkpoint(path)
    assert time.perf_counter() - t0 < 0.5
