"""Built-in methods; importing this package registers them.

Each method lives in its own module and registers itself with
:func:`peftsmoothing.register_method`, exactly as a third-party plug-in would.
"""

from . import adapter, denoiser, full, linear, lora, prompt

__all__ = ["adapter", "denoiser", "full", "linear", "lora", "prompt"]
