"""Apple Core AI (``.aimodel``): converted with coreai-torch, verified on Linux by the Core AI runtime.

Route: ``torch.export`` -> ``run_decompositions(coreai_torch.get_decomp_table())`` -> ``TorchConverter`` ->
``AIProgram.save_asset``. The graph dtype follows the exported program (there is no precision flag), so fp16
means converting ``module.half()`` with half-precision image inputs. Token ids stay int32: the runtime rejects
64-bit inputs.

coreai-torch 0.4.3 has traps that do not raise (see docs/dependencies.md): ``avg_pool2d`` ignores
``count_include_pad=False`` (wrong numbers when padded), crashes on ``ceil_mode=True``, and narrows 64-bit
types silently. ``find_coreai_hazards`` scans the exported graph for them so the export fails with the reason
instead of producing a wrong artifact.

The Linux runtime is a single-threaded reference implementation: its outputs are a correctness oracle, its
latency is not a speed figure (``is_deployment_runtime = False``).

Modules: ``hazards`` (graph scan for converter traps), ``convert`` (conversion and I/O specs), ``runner``
(the runtime wrapper), ``structure`` (checks without running), ``target`` (the ``Target``).
"""

from __future__ import annotations

from .target import CoreAITarget

TARGET = CoreAITarget

__all__ = ["TARGET", "CoreAITarget"]
