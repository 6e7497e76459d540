"""ComfyUI-Uni1: ComfyUI registers this pack by importing this file.

It must never break ComfyUI's start-up: if a dependency is missing or broken, we log what to
install and register no nodes, instead of raising (ComfyUI would then show IMPORT FAILED with a
traceback that does not say what to do).
Node ids (the keys below) are permanent: saved workflows refer to them.
"""
import logging

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    from .nodes import DISPLAY_NAMES, NODES
except ImportError as exc:
    logging.getLogger("uni1").error(
        "ComfyUI-Uni1: nodes not loaded because a dependency is missing (%s). Install the pack's "
        "requirements into ComfyUI's Python: `python -m pip install -r requirements.txt` in the pack "
        "folder (ComfyUI-Manager's 'Try fix' does the same), then restart ComfyUI.", exc)
else:
    NODE_CLASS_MAPPINGS.update(NODES)
    NODE_DISPLAY_NAME_MAPPINGS.update(DISPLAY_NAMES)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
