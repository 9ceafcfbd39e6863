"""The retraining loop (LoRA fine-tuning, evaluation gate, quantization, registry, redeploy).

Not part of this release yet: the package exists so the layout and the import rules are fixed.
"""

from __future__ import annotations
