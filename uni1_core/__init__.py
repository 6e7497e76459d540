"""uni1_core: reasoning-first autoregressive image generation in plain PyTorch.

Public API (stable; see README.md):
    Uni1Model.from_pretrained(path_or_repo_id, dtype=..., device=...)   the Lumina-mGPT 2.0 transformer
    TextTokenizer.from_file(path)                                         the model's text tokenizer
    MoVQ.from_pretrained(path_or_repo_id, dtype=..., device=...)          the MoVQGAN image tokenizer
    make_plan(prompt) -> Plan                                             the reasoning plan
    Plan.from_text(answer) -> Plan                                        a plan from another LLM's answer
    CONDITIONINGS: "prompt+plan", "prompt", "plan"                        what the model reads
    sample_codes(...), SamplingPolicy, PRESETS                            AR / SJD / coupled-SJD sampling
    Uni1Pipeline                                                          all of the above in one object

Names are imported lazily so that `import uni1_core` stays cheap and a user of one part
(say the tokenizer) does not pay for the others. This package never imports ComfyUI.
"""
import importlib

_EXPORTS = {
    "Uni1Model": "model", "ModelConfig": "model", "KVCache": "model",
    "TextTokenizer": "tokenizer",
    "MoVQ": "movq",
    "Plan": "plan", "make_plan": "plan", "PlanError": "plan", "Subject": "plan", "Relation": "plan",
    "Style": "plan", "Box": "plan", "parse_llm_output": "plan",
    "CONDITIONINGS": "conditioning", "read_answer": "llm_answer",
    "SamplingPolicy": "policy", "PRESETS": "policy",
    "sample_codes": "sampler", "SampleResult": "sampler", "Cancelled": "sampler",
    "ImageGrid": "sequence", "ImageVocab": "sequence", "supported_sizes": "sequence",
    "Uni1Pipeline": "pipeline",
    "CheckpointError": "checkpoint",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'uni1_core' has no attribute {name!r}")


def __dir__():
    return __all__
