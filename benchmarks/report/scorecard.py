"""The numerics scorecard: task accuracy of every compressed artifact on the user's labelled images.

Laid out like Qualcomm AI Hub's numerics table: the fp32 PyTorch model first, then one row per target x
precision x encoder with its zero-shot top-1 accuracy, the drop against fp32, top-1 agreement with fp32 and
the embedding cosine on those same images (or class prompts). The figures are the export's own
(``details.accuracy_guard`` of each manifest record, written by ``--eval-dir``); rows without them are left
out, and without any the report has no scorecard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

REFERENCE = "torch"  # the train-time PyTorch model in fp32, the first row


def scorecard(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The scorecard block of ``report.json`` from the report rows' guard figures, or None."""
    scored = [r for r in rows if isinstance(r.get("guard"), Mapping) and "eval_top1" in r["guard"]]
    if not scored:
        return None
    fp32 = sorted({r["guard"].get("eval_fp32_top1") for r in scored}, key=str)
    first = scored[0]["guard"]
    out: list[dict[str, Any]] = [
        {"target": REFERENCE, "precision": "fp32", "encoder": "image+text", "top1": fp32[0]}
    ]
    for r in scored:
        g = r["guard"]
        out.append(
            {
                "target": r.get("target"),
                "precision": r.get("precision"),
                "encoder": r.get("encoder"),
                "top1": g.get("eval_top1"),
                "drop_points": g.get("eval_drop_points"),
                "top1_agreement": g.get("eval_top1_agreement"),
                "cosine_mean": g.get("eval_cosine_mean"),
                "cosine_min": g.get("eval_cosine_min"),
                "guard": g.get("status"),
            }
        )
    card = {"images": first.get("eval_images"), "classes": first.get("eval_classes"), "rows": out}
    if len(fp32) > 1:  # artifacts judged on different evaluation sets: say so, never average
        seen = ", ".join(map(str, fp32))
        card["note"] = f"fp32 top-1 differs between artifacts ({seen}): different evaluation sets"
    return card


def _pct(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "—"


def _num(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "—"


def scorecard_lines(card: Mapping[str, Any] | None) -> list[str]:
    """The scorecard as a Markdown table (empty without one)."""
    if not card:
        return []
    lines = [
        "",
        f"### Numerics scorecard (zero-shot top-1 on {card.get('images')} labelled images, "
        f"{card.get('classes')} classes; from the export's --eval-dir guard)",
        "",
        "| target | precision | encoder | top-1 % | drop (points) | top-1 agreement | cosine mean / min "
        "| guard |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in card["rows"]:
        cos = (
            f"{_num(r.get('cosine_mean'), 5)} / {_num(r.get('cosine_min'), 5)}"
            if r.get("cosine_mean") is not None
            else "—"
        )
        lines.append(
            f"| {r['target']} | {r['precision']} | {r['encoder']} | {_pct(r.get('top1'))} | "
            f"{_pct(r.get('drop_points'))} | {_num(r.get('top1_agreement'), 3)} | {cos} | "
            f"{r.get('guard') or '—'} |"
        )
    if card.get("note"):
        lines += ["", card["note"]]
    return lines
