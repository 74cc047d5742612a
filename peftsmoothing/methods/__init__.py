"""Built-in methods; importing this package registers them.

``base`` holds the method protocol and the method registry, and
``targets`` the helpers that find the sub-modules a method adapts.
Each method lives in its own module and registers itself with
[`peftsmoothing.register_method`][peftsmoothing.register_method], exactly as a third-party plug-in
would (``peft`` only when HF peft is installed). Methods import only leaf modules: never
``wrap``, ``model``, ``losses``, ``training`` or ``smoothing``.
"""

from . import adapter, base, denoiser, full, linear, lora, peft, prompt, targets

__all__ = ["adapter", "base", "denoiser", "full", "linear", "lora", "peft", "prompt", "targets"]
