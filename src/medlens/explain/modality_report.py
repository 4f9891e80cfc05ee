"""A fusion run's explanation section: per test case, one heatmap per modality side by side for
the fused decision, each modality's contribution, and localisation scores per modality where
lesion masks exist.

Cases go through the :class:`~medlens.inference.Predictor` (the bundle's own preprocessing of
each modality), and the maps come from :func:`~medlens.explain.modalities.explain_modalities`.
A lesion mask is drawn on the *main* modality's image; it is used for another modality only when
that image has the main image's size (a registered pair, as the phantoms are) - otherwise that
modality is counted as skipped with the reason, never scored against pixels that do not
correspond.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.explain.cam import normalise_method
from medlens.explain.scores import LocalisationScorer, bootstrap_mean, skip_reason

__all__ = ["explain_fusion_cases", "fusion_section_html"]

_NOTE = (
    "The model fuses several images. Each heatmap is read from that modality's own encoder, with "
    "gradients of the fused decision: it shows where in that image the combined decision looked. "
    "Each map is scaled to its own maximum, so colours are not comparable across modalities; how "
    "much each modality mattered is the contribution: the drop in the decided class's "
    "probability when that image is withheld (the model's learned placeholder used instead, as "
    "for a missing image). A negative contribution means the image argued against the class."
)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def explain_fusion_cases(
    predictor: Any,
    samples: Sequence[Any],
    method: str,
    out_dir: str | Path,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    top_fraction: float = 0.1,
) -> dict[str, Any]:
    """Explain each fusion case (a manifest sample or ``{modality: image}``) per modality.

    Writes ``<out_dir>/<case>_<modality>.png`` overlays; returns ``{"method", "modalities",
    "cases": [...], "contributions": {m: mean with interval}, "localisation": summary or None,
    "errors": {...}}``. Localisation keys its methods ``"<modality> · <method>"`` beside the
    usual random / centre baselines, scored on the main modality's mask.
    """
    from medlens.data.io import read_mask
    from medlens.preprocess import align_mask

    name = normalise_method(method)
    mods = list(predictor.modalities or [])
    if not mods:
        raise MedlensError("per-modality explanations need a fusion bundle (one with modalities)")
    main = mods[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(predictor.classes)
    scorer = LocalisationScorer(top_fraction=top_fraction, n_bootstrap=n_bootstrap, seed=seed)
    cases: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    drops: dict[str, list[float]] = {m: [] for m in mods}
    any_mask = False
    for i, s in enumerate(samples):
        source = str(getattr(s, "path", None) or f"case {i}")
        try:
            pre = predictor.preprocess(s)
            res = predictor.modality_heatmaps(pre, name, None)
        except MedlensError as exc:
            errors[source] = str(exc)
            continue
        case: dict[str, Any] = {
            "source": source,
            "predicted": classes[res["target_class"]],
            "probability": res["probability"],
            "modalities": {},
        }
        mask = None
        mask_path = getattr(s, "mask_path", None)
        if mask_path and pre.get(main) is not None:
            try:
                mask = align_mask(read_mask(mask_path), predictor.pipeline, pre[main].info)
            except MedlensError as exc:
                errors[source] = f"mask: {exc}"
        if mask is not None and mask.any():
            any_mask = True
            scorer.update_baselines(str(i), mask)
        for m, r in res["modalities"].items():
            row = {k: v for k, v in r.items() if k not in ("overlay", "cam")}
            if r["overlay"] is not None:
                png = out / f"{i:04d}_{m}.png"
                png.write_bytes(_png(r["overlay"]))
                row["png"] = str(png)
            if r["contribution"] is not None:
                drops[m].append(float(r["contribution"]))
            if mask is not None and mask.any() and r["given"]:
                key = f"{m} · {name}"
                p = pre[m]
                same = p is not None and p.info.get("original_shape") == pre[main].info.get(
                    "original_shape"
                )
                if not same:
                    scorer.skip(key, "not registered with the main image (sizes differ)")
                else:
                    cam = r["cam"]  # the map itself: the overlay is only for show
                    reason = skip_reason(cam, mask)
                    row["scores"] = None if reason else scorer.update(key, str(i), cam, mask)
                    if reason:
                        scorer.skip(key, reason)
            case["modalities"][m] = row
        cases.append(case)
    contributions = {m: bootstrap_mean(np.array(v), n_bootstrap, seed) for m, v in drops.items()}
    return {
        "method": name,
        "modalities": mods,
        "cases": cases,
        "contributions": contributions,
        "localisation": scorer.compute() if any_mask else None,
        "errors": errors,
    }


def _img(path: str | None, alt: str) -> str:
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii") if path else None
    except OSError:
        data = None
    if data is None:
        return "<span>(not given)</span>"
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" width="140">'


def _signed(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    v, lo, hi = d["value"], d.get("ci_low"), d.get("ci_high")
    if lo is None or hi is None:
        return f"{v:+.3f}"
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def fusion_section_html(summary: dict[str, Any], n_examples: int = 6) -> str:
    """The report's explanation section for a fusion model (from :func:`explain_fusion_cases`)."""
    from medlens.explain.section import explanation_section_html

    mods = list(summary.get("modalities") or [])
    method = str(summary.get("method", ""))
    parts = [
        "<section class='explanations'><h2>Explanations per modality</h2>",
        f"<p class='note'>{html.escape(_NOTE)}</p>",
        "<h3>Contribution of each modality</h3>",
        "<table><thead><tr><th scope='col'>Modality</th>"
        "<th scope='col'>Mean drop when withheld (95 % interval)</th>"
        "<th scope='col'>Cases</th></tr></thead><tbody>",
    ]
    for m in mods:
        c = (summary.get("contributions") or {}).get(m) or {}
        parts.append(
            f"<tr><td>{html.escape(m)}</td><td>{_signed(c)}</td><td>{c.get('n', 0)}</td></tr>"
        )
    parts.append("</tbody></table>")
    loc = summary.get("localisation")
    if loc and loc.get("methods"):
        inner = explanation_section_html(
            None, {"localisation": loc}, title="Localisation per modality (main image's mask)"
        )
        parts.append(inner)
    else:
        parts.append("<p>No lesion masks on these test cases: localisation was not measured.</p>")
    cases = list(summary.get("cases") or [])[:n_examples]
    if cases:
        parts.append(f"<h3>Examples ({html.escape(method)})</h3>")
    for case in cases:
        figs = []
        for m in mods:
            row = case["modalities"].get(m) or {}
            contrib = row.get("contribution")
            cap = [f"<strong>{html.escape(m)}</strong>"]
            cap.append(
                "not given (placeholder used)"
                if not row.get("given")
                else f"contribution {contrib:+.3f}"
                if contrib is not None
                else "contribution n/a"
            )
            if row.get("scores"):
                sc = row["scores"]
                cap.append(f"pointing {sc['pointing_game']:.2f}, energy {sc['energy_in_mask']:.2f}")
            if row.get("note") and row.get("given"):
                cap.append(html.escape(str(row["note"])))
            alt = f"{m} heatmap for {case['predicted']}"
            figs.append(
                "<figure style='margin:0;width:150px;font-size:0.8em'>"
                f"{_img(row.get('png'), alt)}<figcaption>{'<br>'.join(cap)}</figcaption></figure>"
            )
        head = (
            f"{html.escape(Path(case['source']).name)}: predicted "
            f"{html.escape(case['predicted'])} ({case['probability']:.2f})"
        )
        parts.append(
            f"<div class='fusion-case'><p>{head}</p>"
            "<div style='display:flex;gap:8px'>" + "".join(figs) + "</div></div>"
        )
    errors = summary.get("errors") or {}
    if errors:
        items = "".join(
            f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in sorted(errors.items())
        )
        parts.append(f"<p>Cases that could not be explained:</p><ul>{items}</ul>")
    parts.append("</section>")
    return "".join(parts)
