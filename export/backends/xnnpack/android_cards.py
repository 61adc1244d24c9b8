"""Model-card sections for the Android targets (Kotlin): LiteRT and ExecuTorch, with the bundle's names."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _input_line(rec: dict[str, Any]) -> str:
    inp = rec["inputs"][0]
    shape = "x".join(str(d) for d in inp["shape"])
    if rec["encoder"] == "text":
        return f"// {inp['name']}: int32 {shape} CLIP ids (vocab.json + merges.txt), 0-padded"
    if inp["dtype"] == "uint8":
        return f"// {inp['name']}: uint8 {shape} RGB bytes (Bitmap pixels minus alpha), scaling in the graph"
    return f"// {inp['name']}: {inp['dtype']} {shape} RGB in [0, 1]"


def litert_section(records: list[dict[str, Any]]) -> str:
    lines = []
    for rec in records:
        sig = rec.get("details", {}).get("signature", f"encode_{rec['encoder']}")
        name, inp, out = Path(rec["path"]).name, rec["inputs"][0]["name"], rec["outputs"][0]["name"]
        v = rec["encoder"]
        lines += [
            _input_line(rec),
            f'val {v}Interpreter = Interpreter(FileUtil.loadMappedFile(context, "{name}"))',
            f'val {v}Runner = {v}Interpreter.getSignatureRunner("{sig}")',
            f"val {v}Emb = FloatBuffer.allocate({rec['outputs'][0]['shape'][-1]})",
            f'{v}Runner.run(mapOf("{inp}" to {v}Input), mapOf("{out}" to {v}Emb))',
            "",
        ]
    return "## Kotlin (LiteRT)\n\n```kotlin\n" + "\n".join(lines).rstrip() + "\n```\n"


def executorch_section(records: list[dict[str, Any]]) -> str:
    lines = []
    for rec in records:
        inp, v = rec["inputs"][0], rec["encoder"]
        shape = ", ".join(f"{d}L" for d in inp["shape"])
        blob = {"uint8": "fromBlobUnsigned", "int32": "fromBlob"}.get(inp["dtype"], "fromBlob")
        lines += [
            _input_line(rec),
            f'val {v}Module = Module.load(File(filesDir, "{Path(rec["path"]).name}").path)',
            f"val {v}Tensor = Tensor.{blob}({v}Data, longArrayOf({shape}))",
            f"val {v}Emb = {v}Module.forward(EValue.from({v}Tensor))[0].toTensor().dataAsFloatArray",
            "",
        ]
    return "## Kotlin (ExecuTorch)\n\n```kotlin\n" + "\n".join(lines).rstrip() + "\n```\n"
