"""Finding a model folder and reading its weights.

Three ways to name a model, all resolved by `resolve_model_dir`:

    resolve_model_dir("/path/to/folder")               a local folder with config.json
    resolve_model_dir("demo")                          uni1_core/demo_model/, shipped with the package
    resolve_model_dir("Alpha-VLLM/Lumina-mGPT-2.0")    a Hugging Face repo id, fetched with
                                                       huggingface_hub.snapshot_download (only the
                                                       config, tokenizer and weight files)

Downloads honour HF_HUB_OFFLINE (then only the local cache is used) and a `cache_dir`
argument (default: the Hugging Face cache, HF_HOME). A single file from a repo, such as the
MoVQGAN weights, comes from the same machinery:

    path = download_file("ai-forever/MoVQGAN", "movqgan_270M.ckpt", cache_dir=None)
    state = load_pickle_checkpoint(path)     # torch.load(weights_only=True): tensors only, no code

Weights in safetensors format (`model.safetensors`, or shards listed in
`model.safetensors.index.json` under "weight_map") are listed by `list_safetensors_dir`, which
opens every file and checks its header without reading any tensor data, and read by
`load_safetensors_dir`. Every problem raises `CheckpointError` naming the file (and the key)
and saying what to do.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "demo_model"

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# What a model folder needs besides the weights: the config and the text tokenizer.
# The weight files are chosen after reading the index, so nothing else is downloaded.
MODEL_METADATA_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    INDEX_FILE,
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class CheckpointError(ValueError):
    """A model folder, repo id or weight file that cannot be used; the message says why and how to fix it."""


# ---------------------------------------------------------------------------------------------
# Hugging Face hub

def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    import huggingface_hub.constants as hub_constants

    value = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return value.strip().lower() in {"1", "on", "yes", "true"} or bool(hub_constants.HF_HUB_OFFLINE)


def _hub_error(repo_id: str, what: str, err: Exception) -> CheckpointError:
    if hub_offline():
        how = ("HF_HUB_OFFLINE is set and the local cache does not hold it: unset HF_HUB_OFFLINE "
               "to download it once, or pass a local folder")
    else:
        how = ("check the repo id and your connection (a gated or private repo also needs "
               "`huggingface-cli login`), or pass a local folder")
    return CheckpointError(f"could not get {what} from the Hugging Face repo {repo_id!r}: "
                           f"{type(err).__name__}: {err}. Fix: {how}.")


def _snapshot(repo_id: str, allow_patterns: list[str], cache_dir) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache_dir,
                                   local_files_only=hub_offline())
    except Exception as err:  # the hub raises many types (offline, 404, auth, network)
        raise _hub_error(repo_id, f"the files {allow_patterns}", err) from err
    return Path(folder)


def download_file(repo_id: str, filename: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """One file of a Hugging Face repo, from the cache or downloaded; returns its local path."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=hub_offline())
    except Exception as err:
        raise _hub_error(repo_id, f"the file {filename!r}", err) from err
    return Path(path)


def resolve_model_dir(path_or_repo_id: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      allow_patterns: list[str] | None = None) -> Path:
    """The local folder holding a model: a folder as given, the demo model, or a hub snapshot.

    With a repo id and `allow_patterns=None`, the metadata files are fetched first and then
    exactly the weight files that the index names (or model.safetensors).
    """
    name = os.fspath(path_or_repo_id)
    path = Path(name).expanduser()
    if path.is_dir():
        return _check_model_dir(path)
    if name == DEMO_NAME:
        if not DEMO_DIR.is_dir():
            raise CheckpointError(f"the demo model folder {DEMO_DIR} is missing from this installation. "
                                  "Fix: reinstall the package from a complete clone, or pass a model folder "
                                  "or a Hugging Face repo id.")
        return _check_model_dir(DEMO_DIR)
    if path.exists():
        raise CheckpointError(f"{name} is a file, not a model folder. Fix: pass the folder that holds "
                              "config.json and the .safetensors weights.")
    if not _REPO_ID.match(name):
        raise CheckpointError(f"model folder {name!r} does not exist (and it is not a Hugging Face repo id "
                              "of the form owner/name). Fix: check the path, or pass 'demo' or a repo id "
                              "such as 'Alpha-VLLM/Lumina-mGPT-2.0'.")
    if allow_patterns is not None:
        return _check_model_dir(_snapshot(name, list(allow_patterns), cache_dir))
    folder = _snapshot(name, MODEL_METADATA_FILES, cache_dir)
    if (folder / INDEX_FILE).is_file():
        shards = sorted(set(_read_index(folder / INDEX_FILE).values()))
    else:
        shards = [SINGLE_FILE]
    folder = _snapshot(name, MODEL_METADATA_FILES + shards, cache_dir)
    return _check_model_dir(folder)


def _check_model_dir(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        present = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
        raise CheckpointError(f"{folder} has no config.json (it holds {present or 'nothing'}). Fix: pass the "
                              "folder of a Lumina-mGPT 2.0 / Chameleon checkpoint, which holds config.json "
                              f"and {SINGLE_FILE} or {INDEX_FILE} with its shards.")
    return folder


# ---------------------------------------------------------------------------------------------
# safetensors

@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives and what its header says, known before any data is read."""
    file: Path
    shape: tuple[int, ...]
    dtype: str          # safetensors' name, e.g. "BF16", "F32"


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a readable safetensors index ({type(err).__name__}: {err}); "
                              "it must be JSON with a 'weight_map' of key -> shard file. Fix: download it "
                              "again.") from err
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: 'weight_map' must map each key to a shard file name.")
    return weight_map


def _read_header(file: Path) -> dict[str, TensorEntry]:
    if not file.is_file():
        raise CheckpointError(f"weight file {file} is missing. Fix: download the checkpoint again "
                              "(every shard named in the index must be present).")
    try:
        with safe_open(file, framework="pt") as f:
            entries = {}
            for key in f.keys():
                view = f.get_slice(key)
                entries[key] = TensorEntry(file, tuple(view.get_shape()), view.get_dtype())
            return entries
    except Exception as err:  # safetensors raises its own SafetensorError for truncated / bad headers
        raise CheckpointError(f"weight file {file} cannot be read ({type(err).__name__}: {err}); it is "
                              "probably truncated or corrupt. Fix: delete it and download it again.") from err


def list_safetensors_dir(folder: str | os.PathLike) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint folder -> its file, shape and dtype. Reads headers only.

    Opens every file (so a missing or truncated shard is found before any weight is loaded) and
    checks that each key of the index is in the shard the index names.
    """
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_index(index_path)
        headers = {name: _read_header(folder / name) for name in sorted(set(weight_map.values()))}
        entries = {}
        for key, name in weight_map.items():
            if key not in headers[name]:
                raise CheckpointError(f"{index_path} puts {key!r} in {folder / name}, but that file does not "
                                      "hold it. Fix: download the checkpoint again.")
            entries[key] = headers[name][key]
        return entries
    if (folder / SINGLE_FILE).is_file():
        return _read_header(folder / SINGLE_FILE)
    raise CheckpointError(f"{folder} has no weights: neither {SINGLE_FILE} nor {INDEX_FILE}. Fix: download "
                          "the .safetensors files of the checkpoint into this folder.")


def load_safetensors_dir(folder: str | os.PathLike, device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, read straight onto `device` (and cast to `dtype`)."""
    entries = list_safetensors_dir(folder)
    return read_tensors(entries, device=device, dtype=dtype)


def read_tensors(entries: dict[str, TensorEntry], device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read the listed tensors, one file open at a time."""
    by_file: dict[Path, list[str]] = {}
    for key, entry in entries.items():
        by_file.setdefault(entry.file, []).append(key)
    tensors = {}
    for file, keys in by_file.items():
        try:
            with safe_open(file, framework="pt", device=str(device)) as f:
                for key in keys:
                    t = f.get_tensor(key)
                    tensors[key] = t if dtype is None or not t.is_floating_point() else t.to(dtype)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"reading {file} failed ({type(err).__name__}: {err}). Fix: delete the file "
                                  "and download it again.") from err
    return tensors


def load_pickle_checkpoint(path: str | os.PathLike) -> dict:
    """A PyTorch .ckpt/.pt/.bin file read with weights_only=True: tensors and plain containers, no code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist. Fix: check the path or download it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as a tensors-only PyTorch checkpoint "
                              f"({type(err).__name__}: {err}). It may be truncated, or it may need code "
                              "to unpickle, which we refuse. Fix: download it again.") from err
