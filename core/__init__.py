"""mobileclip-export: MobileCLIP checkpoints -> reparameterized, verified on-device artifacts.

Subpackages: ``models`` (architectures, checkpoints, tokenizer), ``reparam`` (structural
reparameterization), ``export`` (targets, verification, bundle, CLI), ``benchmarks``.
"""

__version__ = "0.1.0"
