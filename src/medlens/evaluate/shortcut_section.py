"""The run report's shortcut section: the probe before and after preprocessing, and whether a
class's sensitivity rests on a source cue (figures from :mod:`medlens.shortcuts`)."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["shortcut_html"]


def _num(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{float(v):.{digits}f}"


def _prop(p: dict[str, Any] | None) -> str:
    if not p or p.get("value") is None:
        return "—"
    return f"{p['value']:.3f} [{_num(p.get('ci_low'))}–{_num(p.get('ci_high'))}] (n={p['n']})"


def _probe_row(what: str, probe: dict[str, Any] | None) -> str:
    if not probe:
        return f"<tr><td>{html.escape(what)}</td><td colspan='4'>not run</td></tr>"
    if probe.get("balanced_accuracy") is None:
        why = html.escape(str(probe.get("skipped") or "skipped"))
        return f"<tr><td>{html.escape(what)}</td><td colspan='4'>{why}</td></tr>"
    carriers = ", ".join(probe.get("carriers") or []) or "none"
    return (
        f"<tr><td>{html.escape(what)}</td><td>{_num(probe['balanced_accuracy'])}</td>"
        f"<td>{_num(probe.get('chance'))} / {_num(probe.get('shuffled_p95'))}</td>"
        f"<td>{html.escape(str(probe.get('level')))}</td><td>{html.escape(carriers)}</td></tr>"
    )


def shortcut_html(section: dict[str, Any] | None) -> str:
    """HTML for ``metrics["shortcuts"]`` ("" when the run did not check shortcuts)."""
    if not section:
        return ""
    parts = ["<h2>Shortcuts: acquisition cues before and after preprocessing</h2>"]
    probe = section.get("probe") or {}
    steps = ", ".join(probe.get("steps") or [])
    parts.append(
        "<p>The audit's shortcut probe (a random forest on properties that carry no anatomy, "
        "cross-validated balanced accuracy) on the training data's files, on the pixels as "
        f"decoded, and on the pixels the model sees after preprocessing ({html.escape(steps)}; "
        f"{probe.get('n', 0)} images). A probe still well above chance after preprocessing means "
        "the cue survives into the model's input.</p>"
    )
    parts.append(
        "<table><tr><th>probe on</th><th>balanced accuracy</th><th>chance / shuffled 95th</th>"
        "<th>level</th><th>carried by</th></tr>"
        + _probe_row(
            "files (audit: format, mode, size, file size, intensity, border)", probe.get("files")
        )
        + _probe_row("pixels as decoded", probe.get("decoded"))
        + _probe_row("pixels after preprocessing (what the model sees)", probe.get("preprocessed"))
        + "</table>"
    )
    cue = section.get("cue_test")
    if cue and cue.get("skipped"):
        parts.append(f"<p>Cue test not run: {html.escape(str(cue['skipped']))}.</p>")
    elif cue:
        parts.append(
            f"<p>On {cue['n']} held-out test images, as they are and with their acquisition "
            f"randomised ({html.escape(cue['rule'])}). Accuracy {_prop(cue['accuracy']['as_is'])} "
            f"as they are, {_prop(cue['accuracy']['randomised'])} randomised.</p>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{_prop(v['as_is'])}</td>"
            f"<td>{_prop(v['randomised'])}</td><td>{_num(v['drop'])}</td></tr>"
            for c, v in cue["per_class"].items()
        )
        parts.append(
            "<table><tr><th>class</th><th>sensitivity as is</th><th>randomised</th>"
            f"<th>drop</th></tr>{rows}</table>"
        )
        named = cue.get("named") or []
        parts.append(
            "<p class='warn'><strong>Sensitivity that rests on the source:</strong> "
            + ", ".join(html.escape(c) for c in named)
            + ". These classes' figures may come from acquisition rather than anatomy.</p>"
            if named
            else "<p>No class's sensitivity dropped by the named margin when the acquisition "
            "was randomised.</p>"
        )
    return "\n".join(parts)
