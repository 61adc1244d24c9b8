"""Loading a checkpoint into a model: map its keys, lift an inference form, validate strictly, copy.

Image head bias: MobileCLIP2 heads (timm's classifier Linear) carry a trained bias, Apple's v1 heads have
none. A bias-free head checkpoint loaded into a head with a bias gets a zero bias
(``LoadReport.zero_filled``); a non-zero bias offered to a bias-free head is refused, naming the variants it
fits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mobileclip_export.errors import CheckpointError

from .fingerprints import describe_mismatch, fingerprint, fingerprint_differs, variant_names
from .keymaps import IMAGE_PREFIX, image_head_keys, keymap_for
from .lift import lift_inference_form
from .read import Checkpoint, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    format: str
    reparameterized: bool
    sha256: str
    n_tensors: int
    path: str = ""
    loaded: str = "image+text"  # "image+text" | "image only (text encoder stays random)"
    lifted_modules: int = 0  # inference-form modules lifted into train-time branches
    zero_filled: list[str] = field(default_factory=list)  # model keys the checkpoint lacked, set to zero
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = f", {self.lifted_modules} fused modules lifted" if self.lifted_modules else ""
        extra += f", zero-filled {', '.join(self.zero_filled)}" if self.zero_filled else ""
        return (
            f"{self.format} checkpoint, {self.n_tensors} tensors, {self.loaded}, "
            f"reparameterized={self.reparameterized}{extra}, sha256={self.sha256[:12]}"
        )


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _mismatch_error(
    ck: Checkpoint, model: nn.Module, missing: list[str], unexpected: list[str], bad_shapes: list[str]
) -> CheckpointError:
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    msg = f"checkpoint {ck.path} ({ck.format}) does not fit model {name!r}: " + describe_mismatch(ck, model)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if bad_shapes:
        parts.append(f"{len(bad_shapes)} shape mismatches: {_first(bad_shapes, 3)}")
    return CheckpointError(msg + "; ".join(parts))


def _zero_fill_head_bias(canon: dict[str, Tensor], shapes: Mapping[str, torch.Size]) -> list[str]:
    """A bias-free head checkpoint (Apple v1 ``head.proj``/``classifier.proj``) for a head with a bias: the
    bias becomes zero, which is exactly the checkpoint's function. Only when the head weight is there, so a
    foreign head (other names, extra layers) still fails as missing/unexpected keys."""
    head = image_head_keys(shapes)
    if head is None or head[1] is None or head[1] in canon or head[0] not in canon:
        return []
    canon[head[1]] = torch.zeros(shapes[head[1]], dtype=canon[head[0]].dtype)
    return [head[1]]


def _biased_variants_hint(ck: Checkpoint) -> str:
    names = variant_names(fingerprint(ck.state_dict, ck.format))
    return f" (it fits: {', '.join(names)})" if names else ""


def _check_keys(
    ck: Checkpoint,
    model: nn.Module,
    canon: dict[str, Tensor],
    unknown: list[str],
    shapes: dict[str, torch.Size],
    image_only: bool,
) -> set[str]:
    """The model keys this checkpoint must fill; raises naming missing/unexpected keys and bad shapes."""
    expected = set(shapes)
    if image_only:
        expected = {k for k in expected if k.startswith(IMAGE_PREFIX)}
    missing = sorted(k for k in expected - set(canon) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(unknown) | (set(canon) - set(shapes)))
    bad_shapes = [
        f"{k}: checkpoint {list(canon[k].shape)} vs model {list(shapes[k])}"
        for k in sorted(set(canon) & expected)
        if canon[k].shape != shapes[k]
    ]
    if missing or unexpected or bad_shapes:
        if ck.reparameterized and missing and not fingerprint_differs(ck, model):
            raise CheckpointError(
                f"{ck.path} is reparameterized beyond Apple's inference form (e.g. this project's fully "
                f"fused model) and cannot be lifted into train-time keys ({len(missing)} missing: "
                f"{_first(missing, 3)}); load it into reparameterize_model(model) "
                "(mobileclip_export.reparam.load_model_checkpoint does this)"
            )
        raise _mismatch_error(ck, model, missing, unexpected, bad_shapes)
    return expected


def _add_notes(report: LoadReport, ck: Checkpoint, zero_filled: list[str], image_only: bool) -> None:
    """What a user must know about a load that succeeded (zero-filled bias, image tower only)."""
    if zero_filled:
        report.notes.append(
            f"the checkpoint's image head has no bias (Apple v1 form): {zero_filled[0]} set to zero, so the "
            "head computes exactly what the checkpoint's does"
        )
        log.info("%s: bias-free image head, %s zero-filled", ck.path, zero_filled[0])
    if image_only:
        report.notes.append(
            "timm checkpoints hold the image tower only: text_encoder and logit_scale are "
            "unchanged (random unless loaded separately)"
        )
        log.warning("%s: image tower only; the text encoder stays random", ck.path)


def _check_dtypes(ck: Checkpoint, canon: dict[str, Tensor], model_sd: dict[str, Tensor]) -> None:
    """Integer tensors where the model holds floats (quantized or corrupted weights) are refused by name:
    casting them would load weights off by their scale, which parity cannot blame on the right cause."""
    bad = [
        k
        for k, v in canon.items()
        if not v.is_floating_point()
        and not k.endswith("num_batches_tracked")
        and (k not in model_sd or model_sd[k].is_floating_point())  # inference-form keys are all floats
    ]
    if bad:
        shown = ", ".join(f"{k} ({str(canon[k].dtype).replace('torch.', '')})" for k in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{ck.path}: {len(bad)} tensor(s) hold integers where the model holds floats: {shown}{more}; "
            "quantized or corrupted weights are not dequantized, export a float checkpoint"
        )


def load_checkpoint(model: nn.Module, path: str | Path | Checkpoint) -> LoadReport:
    """Load ``path`` into ``model`` in place (strict: every key and shape must match); returns a LoadReport.

    Accepts apple/open_clip/timm names, train-time or Apple/timm inference form (lifted). A timm image
    tower loads only ``image_encoder``; the text encoder and logit_scale keep their values.
    """
    ck = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    model_sd = model.state_dict()
    shapes = {k: v.shape for k, v in model_sd.items()}
    canon, unknown, problems = keymap_for(model, ck.format).to_canonical(ck.state_dict, shapes)
    if problems:
        raise CheckpointError(f"{ck.path}: " + "; ".join(problems) + _biased_variants_hint(ck))
    _check_dtypes(ck, canon, model_sd)
    canon, lifted = lift_inference_form(canon, model)
    zero_filled = _zero_fill_head_bias(canon, shapes)
    image_only = ck.format == "timm"
    expected = _check_keys(ck, model, canon, unknown, shapes, image_only)
    with torch.no_grad():
        for k in expected & set(canon):
            model_sd[k].copy_(canon[k].to(model_sd[k].dtype))
    report = LoadReport(
        format=ck.format,
        reparameterized=ck.reparameterized,
        sha256=ck.sha256,
        n_tensors=len(ck.state_dict),
        path=str(ck.path),
        loaded="image only (text encoder stays random)" if image_only else "image+text",
        lifted_modules=lifted,
        zero_filled=zero_filled,
    )
    _add_notes(report, ck, zero_filled, image_only)
    return report
