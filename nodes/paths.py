"""Where Uni1 models live and how a name from a workflow becomes a path, safely.

Models go in `ComfyUI/models/uni1/` (one sub-folder per model, laid out as on Hugging Face:
`models/uni1/Alpha-VLLM/Lumina-mGPT-2.0/config.json ...`). The folder is registered with
ComfyUI's `folder_paths` under the name `uni1`, extending (never replacing) whatever the user's
`extra_model_paths.yaml` already added, so `uni1: D:/models/uni1` there just works.

A workflow is a file shared between people, so a model name in it is untrusted input: it must be
a relative name inside one of the `uni1` folders (no `..`, no absolute path, nothing that resolves
outside through a link), or a Hugging Face repo id, or the embedded `demo`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..uni1_core.chat import CHAT_MODEL_TYPES

FOLDER = "uni1"
DEMO = "demo"
# Repo ids offered in the loaders before they are downloaded (they then appear as local folders
# of the same name, so a saved workflow keeps working offline).
KNOWN_MODEL_REPOS = ("Alpha-VLLM/Lumina-mGPT-2.0", "Alpha-VLLM/Lumina-mGPT-2.0-Omni")
KNOWN_VQ_REPOS = ("ai-forever/MoVQGAN",)
VQ_FROM_MODEL = "from model folder"
VQ_SUFFIXES = (".safetensors", ".ckpt")   # .ckpt is read by uni1_core without unpickling code

# Longer names are refused before they reach the file system, which would raise OSError
# ("File name too long") from a mere exists().
MAX_NAME_CHARS, MAX_PART_CHARS = 1024, 255

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class ModelPathError(ValueError):
    pass


def _folder_paths():
    try:
        import folder_paths
        return folder_paths
    except ImportError:
        return None


def register_model_folder() -> None:
    """Add `models/uni1` to ComfyUI's folder registry, keeping user-configured paths."""
    fp = _folder_paths()
    if fp is None:
        return
    default = os.path.join(fp.models_dir, FOLDER)
    paths, exts = fp.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    # An empty extension set lists every file; we list folders ourselves and VQ files by suffix.
    fp.folder_names_and_paths[FOLDER] = (paths, set(exts) | set(VQ_SUFFIXES))


def model_roots() -> list[Path]:
    """The `uni1` folders, in ComfyUI's order (extra_model_paths.yaml entries included)."""
    fp = _folder_paths()
    if fp is None:
        return []
    if FOLDER not in fp.folder_names_and_paths:
        register_model_folder()
    return [Path(p) for p in fp.get_folder_paths(FOLDER)]


def _children(root: Path, depth: int = 2):
    """Sub-folders up to `depth` levels below root (models sit at `name/` or `org/name/`)."""
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield child
            if depth > 1:
                yield from _children(child, depth - 1)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# Text-only models the reasoner runs (nodes/reasoner.py lists them as planners): a Qwen folder in
# models/uni1/ is not an image model, so the Model Loader does not offer it.
TEXT_MODEL_TYPES = CHAT_MODEL_TYPES


def _is_image_model_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        if config.stat().st_size > 1 << 20:          # not a config a model folder ships; let loading say so
            return True
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") not in TEXT_MODEL_TYPES
    except (OSError, ValueError, AttributeError):    # unreadable or not an object: loading names the problem
        return True


def list_models() -> list[str]:
    """Combo choices for the model loader: demo first, local image-model folders, then known repos."""
    local = []
    for root in model_roots():
        for d in _children(root):
            if _is_image_model_folder(d):
                local.append(_rel(d, root))
    remote = [r for r in KNOWN_MODEL_REPOS if r not in local]
    return [DEMO] + sorted(set(local)) + remote


def list_vqs() -> list[str]:
    """Combo choices for the VQ loader: the model's own MoVQ first, local weights, known repos."""
    local = []
    for root in model_roots():
        for d in [root, *_children(root)]:
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix in VQ_SUFFIXES and "movq" in f.name.lower():
                    local.append(_rel(f, root))
    remote = [r for r in KNOWN_VQ_REPOS if r not in local]
    return [VQ_FROM_MODEL] + sorted(set(local)) + remote


def check_name(name: str) -> str:
    """Refuse names that could point outside the model folders; return the normalised name."""
    if not isinstance(name, str) or not name.strip():
        raise ModelPathError("no model name given: pick one from the list")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or any(len(p) > MAX_PART_CHARS for p in re.split(r"[\\/]", name)):
        raise ModelPathError(
            f"model name {name[:60]!r}... is {len(name)} characters long; a name has at most {MAX_NAME_CHARS} "
            f"characters and {MAX_PART_CHARS} per folder. Pick a model from the list.")
    if (name.startswith(("/", "\\", "~")) or PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive):
        raise ModelPathError(
            f"model name {name!r} is an absolute path, which a workflow may not use. Put the model "
            f"in ComfyUI/models/{FOLDER}/ (or add its folder under '{FOLDER}:' in extra_model_paths.yaml) "
            f"and pick it from the list.")
    parts = re.split(r"[\\/]", name)
    if any(p in ("..", ".") for p in parts) or "" in parts:
        raise ModelPathError(
            f"model name {name!r} contains '..', '.' or an empty path part; names must stay inside "
            f"the models/{FOLDER} folders. Pick a model from the list.")
    return "/".join(parts)


def resolve_local(name: str, roots: list[Path] | None = None) -> Path | None:
    """The file or folder `name` names inside a `uni1` folder (or one of `roots`), or None if
    there is none. Raises if the name is unsafe or resolves (e.g. through a link) outside the
    models folders, or if a model folder holds a file that does (a weight file linked to /etc/...
    is refused)."""
    name = check_name(name)
    roots = model_roots() if roots is None else roots
    for root in roots:
        candidate = root.joinpath(*name.split("/"))
        try:
            if not candidate.exists():
                continue
            real_root, real = root.resolve(), candidate.resolve()
            if not _inside(real, [real_root]):
                raise ModelPathError(
                    f"model name {name!r} resolves to {real}, outside the models folder {real_root}; "
                    f"links out of the folder are refused. Add that location under '{FOLDER}:' in "
                    f"extra_model_paths.yaml instead.")
            if real.is_dir():
                _check_files_stay_inside(real, [r.resolve() for r in roots])
        except OSError as exc:
            raise ModelPathError(f"model name {name!r} cannot be looked up ({exc}). Pick a model from "
                                 f"the list.") from exc
        return real
    return None


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _check_files_stay_inside(folder: Path, real_roots: list[Path]) -> None:
    """Every file the loaders read from a model folder (its top level: config, tokenizer,
    weights, MoVQ) must resolve inside a models folder too, not only the folder itself."""
    for entry in folder.iterdir():
        real = entry.resolve()
        if not _inside(real, real_roots):
            raise ModelPathError(
                f"{entry} is a link to {real}, outside the models folders; links out of them are refused. "
                f"Copy the file into the model folder, or add its location under '{FOLDER}:' in "
                f"extra_model_paths.yaml.")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def validate_choice(name: str, kind: str = "model") -> bool | str:
    """ComfyUI VALIDATE_INPUTS helper: True, or a message the UI shows on the node."""
    if name is None:
        return True   # linked from another node: checked when the loader runs
    try:
        if name in (DEMO, VQ_FROM_MODEL):
            return True
        local = resolve_local(name)
    except ModelPathError as exc:
        return str(exc)
    if local is not None or is_repo_id(name):
        return True
    return (f"{kind} {name!r} was not found in ComfyUI/models/{FOLDER}/ and is not a Hugging Face "
            f"repo id (owner/name). Pick one from the list, or put the {kind} there.")


def download_dir(repo_id: str) -> Path:
    """Where a repo is downloaded: `<first uni1 folder>/<owner>/<name>`, so it is listed (and
    used offline) next time under the same name."""
    roots = model_roots()
    if not roots:
        raise ModelPathError("ComfyUI's folder_paths is not available, so there is no models folder "
                             "to download into; pass a local path instead.")
    return roots[0].joinpath(*repo_id.split("/"))
