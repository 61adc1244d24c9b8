"""Zero-shot use of a bundle: labels and prompt templates (``prompts``), encoders backed by artifacts or the
train-time model (``encoders``), ``predict`` (classification and retrieval) and classifier artifacts
(``classifier``: the label set baked into the image encoder).
"""
