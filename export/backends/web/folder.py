"""The folder transformers.js loads: what goes in it, built on the onnx backend's export.

Layout (the public Xenova/mobileclip_* folders follow it): ``config.json``, ``preprocessor_config.json``, the
tokenizer files, ``LICENSE``, ``README.md`` at the root; ``onnx/vision_model{suffix}.onnx`` and
``onnx/text_model{suffix}.onnx`` per dtype (transformers.js suffixes: fp32 '', fp16 ``_fp16``, q8
``_quantized``). The graphs take ``pixel_values`` (float32 [B,3,S,S] in [0,1]: mean/std stay in the graph, so
``do_normalize`` is false) and ``input_ids`` (int64 [B,77]), return ``image_embeds`` / ``text_embeds``, with
a dynamic batch. transformers.js truncates a text over 77 tokens without an EOT in the last slot, where our
tokenizer forces one; the text graph writes EOT into slot 76 whenever it holds a token (a no-op for every
text that fits), so apps get our ids' embeddings unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobileclip_export.errors import ExportFailure
from mobileclip_export.export.spec import EncoderExport, TensorSpec

if TYPE_CHECKING:
    from torch import nn


@dataclasses.dataclass(frozen=True)
class Dtype:
    name: str  # transformers.js dtype
    suffix: str  # file-name suffix transformers.js looks for
    precision: str  # our precision name (tolerance table, accuracy guard)


DTYPES = {
    "fp32": Dtype("fp32", "", "fp32"),
    "fp16": Dtype("fp16", "_fp16", "fp16"),
    "q8": Dtype("q8", "_quantized", "int8"),  # uint8 dynamic quantization: signed int8 ran 5x slower in WASM
}
BY_PRECISION = {d.precision: d for d in DTYPES.values()}
MODEL_FILE = {"image": "vision_model", "text": "text_model"}
INPUT = {"image": "pixel_values", "text": "input_ids"}
OUTPUT = {"image": "image_embeds", "text": "text_embeds"}
_RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL codes, as Hugging Face processors store them


def onnx_path(folder: Path, encoder: str, dtype: str) -> Path:
    return Path(folder) / "onnx" / f"{MODEL_FILE[encoder]}{DTYPES[dtype].suffix}.onnx"


def _eot_wrapper(module: nn.Module, eot_id: int) -> nn.Module:
    """int64 ids in; EOT written into the last slot when a token occupies it (our truncation rule)."""
    import torch
    from torch import nn

    class EotFixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            last = input_ids[:, -1:]
            last = torch.where(last != 0, torch.full_like(last, eot_id), last)
            return self.inner(torch.cat([input_ids[:, :-1], last], dim=1))

    return EotFixed().eval()


def _int64_wrapper(module: nn.Module) -> nn.Module:
    """int64 ids in, nothing else changed (the graph without the EOT fix, for tests that show it matters)."""
    from torch import nn

    class Int64Ids(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, input_ids: Any) -> Any:
            return self.inner(input_ids)

    return Int64Ids().eval()


def web_encoder(enc: EncoderExport, eot_fix: bool = True) -> EncoderExport:
    """``enc`` with transformers.js' tensor names (and for text: int64 ids, the EOT fix)."""
    out = (TensorSpec(OUTPUT[enc.encoder], enc.outputs[0].shape, "float32", "unnormalized embedding"),)
    if enc.encoder == "image":
        spec = dataclasses.replace(enc.inputs[0], name=INPUT["image"])
        return dataclasses.replace(enc, inputs=(spec,), outputs=out)
    from mobileclip_export.models.tokenizer import EOT_ID

    module = _eot_wrapper(enc.module, EOT_ID) if eot_fix else _int64_wrapper(enc.module)
    ids = tuple(x.long() for x in enc.example_inputs)
    spec = TensorSpec(INPUT["text"], enc.inputs[0].shape, "int64", "CLIP BPE token ids, zero padded")
    return dataclasses.replace(enc, module=module, example_inputs=ids, inputs=(spec,), outputs=out)


def write_onnx(enc: EncoderExport, dtype: str, folder: Path) -> dict[str, Any]:
    """One model file of one dtype via the onnx backend (q8: the fp32 file quantized like its ``int8``)."""
    from mobileclip_export.export.backends.onnx import OnnxTarget
    from mobileclip_export.export.backends.onnx.quantize import quantize_file

    path = onnx_path(folder, enc.encoder, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dtype == "q8":
        shutil.copyfile(onnx_path(folder, enc.encoder, "fp32"), path)
        details = quantize_file(path, DTYPES[dtype].precision, (), None)
    else:
        info = OnnxTarget().export(enc, dtype, {"opset": 18, "dynamic_batch": True}, path)
        details = {k: info.details[k] for k in ("opset", "n_nodes") if k in info.details}
    return {"file": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size, **details}


def preprocessing_of(enc: EncoderExport) -> dict[str, Any]:
    """The variant's preprocessing as the pipeline embedded it in the image encoder's metadata."""
    if "preprocessing" in enc.metadata:
        return dict(json.loads(enc.metadata["preprocessing"]))
    from mobileclip_export.models import get_model_spec

    return get_model_spec(enc.model_name).preprocessing.to_dict()


def preprocessor_config(pre: dict[str, Any]) -> dict[str, Any]:
    """CLIP-style processor settings; ``size`` as ``shortest_edge`` (a bare number letterboxes silently)."""
    if pre.get("resize_mode", "shortest") != "shortest":
        raise ExportFailure(f"web: resize mode {pre.get('resize_mode')!r} has no transformers.js equivalent")
    return {
        "feature_extractor_type": "CLIPFeatureExtractor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": int(pre["resize"])},
        "resample": _RESAMPLE[pre.get("interpolation", "bilinear")],
        "do_center_crop": True,
        "crop_size": int(pre["crop"]),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,  # mean/std are applied inside the graph
    }


def config_json(encs: list[EncoderExport], pin: dict[str, str]) -> dict[str, Any]:
    """``model_type`` for the Auto classes, and the dtype pin for both models (WASM defaults to q8)."""
    meta = encs[0].metadata
    dim = encs[0].outputs[0].shape[-1]
    doc: dict[str, Any] = {"model_type": "clip", "projection_dim": int(dim)}
    for enc in encs:
        if enc.encoder == "image":
            doc["vision_config"] = {"image_size": int(enc.image_size or enc.inputs[0].shape[-1])}
        else:
            doc["text_config"] = {"max_position_embeddings": int(enc.inputs[0].shape[-1])}
    doc["logit_scale"] = float(meta.get("logit_scale", 100.0))
    doc["transformers.js_config"] = {"dtype": {MODEL_FILE[e]: d for e, d in pin.items()}}
    doc["mobileclip_export"] = {
        k: meta[k] for k in ("model", "weights", "random_init", "reduced") if k in meta
    }
    return doc


def write_json(path: Path, doc: Any) -> None:
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, context_length: int) -> list[str]:
    """The Hugging Face tokenizer files at the folder root (transformers.js reads them there)."""
    from mobileclip_export.models.app_tokenizer import app_tokenizer_files
    from mobileclip_export.models.tokenizer import LICENSE_FILE, get_tokenizer

    Path(folder).mkdir(parents=True, exist_ok=True)
    files = dict(app_tokenizer_files(get_tokenizer(), context_length))
    files[LICENSE_FILE.name] = LICENSE_FILE.read_bytes()
    for name, blob in files.items():
        (Path(folder) / name).write_bytes(blob)
    return sorted(files)
