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

import functools
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors$")


class CheckpointError(ValueError):
    """A model folder, repo id or weight file that cannot be used; the message says why and how to fix it."""


class DownloadError(CheckpointError):
    """The hub did not deliver a file (offline, unknown repo, no access, network); `__cause__` is
    the hub's own exception."""


# ---------------------------------------------------------------------------------------------
# Hugging Face hub

def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    import huggingface_hub.constants as hub_constants

    value = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return value.strip().lower() in {"1", "on", "yes", "true"} or bool(hub_constants.HF_HUB_OFFLINE)


def _hub_error(repo_id: str, what: str, err: Exception) -> DownloadError:
    if hub_offline():
        how = ("HF_HUB_OFFLINE is set and the local cache does not hold it: unset HF_HUB_OFFLINE "
               "to download it once, or pass a local folder")
    else:
        how = ("check the repo id and your connection (a gated or private repo also needs "
               "`huggingface-cli login`), or pass a local folder")
    return DownloadError(f"could not get {what} from the Hugging Face repo {repo_id!r}: "
                           f"{type(err).__name__}: {err}. Fix: {how}.")


def _snapshot(repo_id: str, allow_patterns: list[str], cache_dir=None, local_dir=None, tqdm_class=None) -> Path:
    from huggingface_hub import snapshot_download

    options = {"local_dir": str(local_dir)} if local_dir is not None else {}
    if tqdm_class is not None:
        options["tqdm_class"] = tqdm_class
    try:
        folder = snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache_dir,
                                   local_files_only=hub_offline(), **options)
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


def download_model(repo_id: str, cache_dir: str | os.PathLike | None = None, local_dir: str | os.PathLike | None = None,
                   tqdm_class=None, check_config: Callable[[Path], object] | None = None) -> Path:
    """Fetch exactly the files a model folder needs, never the whole repo, in three steps:

    1. config.json, passed to `check_config` (e.g. `ModelConfig.from_file`, which refuses a
       model of another type): a repo that is not a model we run costs one small file;
    2. the tokenizer files and the weight index;
    3. the weight files the index names (plain `*.safetensors` names in the folder), or
       model.safetensors. Pickled weights (.bin, .pt) are never downloaded.

    Into `local_dir` when given (ComfyUI's models folder), else the Hugging Face cache.
    """
    fetch = functools.partial(_snapshot, repo_id, cache_dir=cache_dir, local_dir=local_dir, tqdm_class=tqdm_class)
    if check_config is not None:
        fresh = local_dir is not None and not Path(local_dir).exists()
        folder = fetch(["config.json"])
        try:
            check_config(_check_model_dir(folder) / "config.json")
        except Exception:
            if fresh:   # leave no half-downloaded folder that would be listed as a model
                shutil.rmtree(folder, ignore_errors=True)
            raise
    folder = fetch(MODEL_METADATA_FILES)
    folder = fetch(MODEL_METADATA_FILES + weight_file_names(folder))
    return _check_model_dir(folder)


def resolve_model_dir(path_or_repo_id: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      allow_patterns: list[str] | None = None,
                      check_config: Callable[[Path], object] | None = None) -> Path:
    """The local folder holding a model: a folder as given, the demo model, or a hub snapshot.

    With a repo id and `allow_patterns=None`, `download_model` fetches the config (checked
    with `check_config`), the metadata files, and then exactly the weight files the index names.
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
    return download_model(name, cache_dir=cache_dir, check_config=check_config)


def weight_file_names(folder: Path) -> list[str]:
    """The weight files a model folder needs: the shards its index names, else model.safetensors.
    A shard name must be a plain `*.safetensors` file name: an index is downloaded data, and a
    name with a path in it could point a download (or a read) outside the folder."""
    if not (folder / INDEX_FILE).is_file():
        return [SINGLE_FILE]
    names = sorted(set(_read_index(folder / INDEX_FILE).values()))
    bad = [n for n in names if not _SHARD_NAME.match(n)]
    if bad:
        raise CheckpointError(f"{folder / INDEX_FILE} names weight files {bad[:3]}, which are not plain "
                              "*.safetensors file names in the folder. Fix: use the checkpoint's own index; "
                              "only safetensors shards are read.")
    return names


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
        headers = {name: _read_header(folder / name) for name in weight_file_names(folder)}
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


def read_metadata(file: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file's header (no tensor data is read)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:
        raise CheckpointError(f"weight file {file} cannot be read ({type(err).__name__}: {err}); it is probably "
                              "truncated or not a safetensors file. Fix: delete it and download it again.") from err


def list_safetensors_file(file: str | os.PathLike) -> dict[str, TensorEntry]:
    """Every tensor of one safetensors file -> its shape and dtype, from the header only."""
    return _read_header(Path(file))


def save_safetensors(tensors: dict[str, torch.Tensor], dst: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write `tensors` to `dst`, through a temporary name, so an interrupted write never leaves a
    truncated file under the real name."""
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp),
              metadata={"format": "pt", **metadata})
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------
# PyTorch pickles (.ckpt, .pt, .bin)

def load_pickle_checkpoint(path: str | os.PathLike) -> object:
    """A PyTorch pickle read with `torch.load(weights_only=True)`: PyTorch's restricted unpickler,
    which builds tensors and plain containers and refuses anything that would import or call
    code. A file it refuses is reported, never retried unrestricted. Memory-mapped when the
    file format allows it (the zip format; older files are read whole)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist. Fix: check the path or download it again.")
    with open(path, "rb") as f:
        magic = f.read(2)
    # a zip archive (torch >= 1.6) or a pickle stream (protocol 2+, the legacy format): anything
    # else is not a checkpoint, and must not be reported as a pickle that wants to run code
    if not (magic == b"PK" or magic[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it is neither a zip archive nor a pickle; "
                              f"it starts with {magic!r}). Fix: download the .ckpt / .pt file again, or "
                              "give a .safetensors file.")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)   # legacy (pre-zip) format
    except Exception as err:
        # The pickle module stays out of run-time code, so its error is recognised by name.
        if type(err).__name__ != "UnpicklingError" or "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint: it is truncated, corrupt or "
                                  f"not a checkpoint ({type(err).__name__}: {err}). Fix: download it again.") from err
        raise CheckpointError(_refusal(path, err)) from err


def _refusal(path: Path, err: Exception) -> str:
    reason = next((line.strip() for line in str(err).splitlines()
                   if re.search(r"unsupported|GLOBAL|not allowed", line, re.I)),
                  str(err).strip().splitlines()[-1])
    return (f"Refusing to load {path}: its pickle asks to import or call code, not just to build tensors "
            f"({reason}). Loading it would run that code, so it is not loaded. If you trust where the file "
            f"came from, convert it once, in a throwaway environment, to safetensors, e.g.\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{path}', map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); "
            f"save_file({{k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, "
            f"'{path.stem}.safetensors')\"\n"
            f"and load {path.stem}.safetensors instead.")
