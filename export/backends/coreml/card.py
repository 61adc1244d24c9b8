"""The Core ML section of the bundle's model card: a Swift snippet with the bundle's own names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .options import STATIC


def _names(rec: dict[str, Any]) -> tuple[str, str, str]:
    return Path(rec["path"]).stem, rec["inputs"][0]["name"], rec["outputs"][0]["name"]


def card_section(records: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    by_enc = {r["encoder"]: r for r in records}
    lines = ["import CoreML", ""]
    if "image" in by_enc:
        stem, inp, out = _names(by_enc["image"])
        size = manifest.get("image_size")
        lines += [
            f"// {size}x{size} RGB CVPixelBuffer, resized + center-cropped as above (the model scales /255)",
            f'let imageURL = Bundle.main.url(forResource: "{stem}", withExtension: "mlmodelc")!',
            "let imageModel = try MLModel(contentsOf: imageURL)",
            f'let imageIn = try MLDictionaryFeatureProvider(dictionary: ["{inp}": '
            "MLFeatureValue(pixelBuffer: px)])",
            f'let imageEmb = try imageModel.prediction(from: imageIn).featureValue(for: "{out}")!'
            ".multiArrayValue!",
            "",
        ]
    if "text" in by_enc:
        stem, inp, out = _names(by_enc["text"])
        lines += [
            "// ids: int32 [1, 77] from a CLIP BPE tokenizer loading this folder's vocab.json + merges.txt",
            "// (e.g. swift-transformers), zero-padded after EOT",
            f'let textURL = Bundle.main.url(forResource: "{stem}", withExtension: "mlmodelc")!',
            "let textModel = try MLModel(contentsOf: textURL)",
            f'let textIn = try MLDictionaryFeatureProvider(dictionary: ["{inp}": '
            "MLFeatureValue(multiArray: ids)])",
            f'let textEmb = try textModel.prediction(from: textIn).featureValue(for: "{out}")!'
            ".multiArrayValue!",
        ]
    naming = "Apple's published names: apps written for `apple/coreml-mobileclip` run these files unchanged. "
    apple = any((r.get("options") or {}).get("naming") == "apple" for r in records)
    static = sorted({r["precision"] for r in records if r.get("precision") in STATIC})
    units = (
        f"`{', '.join(static)}` quantize activations to int8 too (W8A8 / A8W4): set "
        "`config.computeUnits = .cpuAndNeuralEngine`; int8 x int8 runs faster on the Neural Engine of "
        "A17 Pro / M4 and later, elsewhere it is smaller, not faster.\n\n"
    )
    return (
        "## Swift (Core ML)\n\n"
        + (naming if apple else "")
        + (units if static else "")
        + "Add the `.mlpackage` files to the Xcode target (Xcode compiles them to `.mlmodelc`).\n\n"
        + "```swift\n"
        + "\n".join(lines)
        + "\n```\n"
    )
