"""Plain-language summary of one result: what was found, how sure, what to check, who decides.

Generated from the numbers alone (deterministic, testable, no network). An optional rewrite by
an LLM behind an OpenAI-compatible URL is off by default; it receives only this summary text (no
image, no file name, no user) and its output is always shown *beside* the numbers, labelled as a
machine rewrite. The API key is read from the environment variable named in the settings.
"""

from __future__ import annotations

import json
import math
import os
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from medlens.inference import DISCLAIMER
from medlens.serve.formatting import pct


@dataclass
class SummaryInput:
    model_name: str
    decision: str
    label: str
    probabilities: dict[str, float]
    decision_threshold: float | None
    calibrated: bool
    priority: list[str]
    borderline: list[str]
    preprocess_info: dict[str, Any]
    # A multi-task model's other heads, as stored with the result (see :func:`head_findings`).
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Fusion models only: the modalities this prediction used, and all the model takes.
    modalities_used: list[str] | None = None
    modalities: list[str] | None = None
    # Input gate and conformal set (see medlens.prediction): not-assessed results say why only.
    status: str = "ok"
    reason: str | None = None
    prediction_set: list[str] | None = None
    uncertain: bool = False
    input_check: str = "not recorded"
    coverage: float | None = None


def certainty_words(p: float) -> str:
    if p >= 0.9:
        return "high"
    if p >= 0.7:
        return "moderate"
    if p >= 0.5:
        return "low"
    return "very low"


@dataclass(frozen=True)
class Finding:
    """One other head's output as a clinician reads it: ``stage: stage 2 (71%)``."""

    name: str  # display name: the head's name, "score" added for a regression head
    value: str  # "stage 2 (71%)" or "0.42"
    confidence: float | None  # classification heads: the shown class's (uncalibrated) score

    @property
    def text(self) -> str:
        return f"{self.name}: {self.value}"


def head_findings(heads: dict[str, dict[str, Any]] | None) -> list[Finding]:
    """Display rows for a result's other heads, in the model's head order.

    A regression head's name gets "score" appended ("risk" -> "risk score") because its value is
    an unscaled model output, not a measurement in clinical units. A value that is missing or
    not finite (a diverged head) says so instead of printing ``nan``.
    """
    rows = []
    for name, out in (heads or {}).items():
        label = str(name).replace("_", " ")
        if "value" in out:
            v = out.get("value")
            if not label.endswith(("score", "value")):
                label += " score"
            ok = isinstance(v, int | float) and math.isfinite(v)
            rows.append(Finding(label, f"{v:.2f}" if ok else "not available", None))
            continue
        conf = out.get("confidence")
        if isinstance(conf, int | float) and math.isfinite(conf):
            rows.append(Finding(label, f"{out.get('label', '?')} ({pct(conf)})", float(conf)))
        else:
            rows.append(Finding(label, str(out.get("label", "not available")), None))
    return rows


def modality_name(m: str) -> str:
    """``mri`` -> ``MRI``: short modality keys are acronyms; longer ones are kept as written."""
    return m.upper() if len(m) <= 3 else m


def modalities_text(used: list[str] | None, available: list[str] | None) -> str | None:
    """``"MRI only — CT missing"`` for a fusion result; None for a single-image model.

    ``available`` (all the model's modalities) comes from the loaded bundle; when the model is no
    longer loaded only what was used can be said.
    """
    if used is None:
        return None
    names = [modality_name(m) for m in used] or ["none"]
    if not available:
        return " + ".join(names) + " used"
    missing = [modality_name(m) for m in available if m not in used]
    if not missing:
        return " + ".join(names) + " (all modalities)"
    only = " only" if len(names) == 1 else ""
    return f"{' + '.join(names)}{only} — {', '.join(missing)} missing"


def main_preprocess_info(info: dict[str, Any], modalities_used: list[str] | None) -> dict[str, Any]:
    """The main image's preprocessing facts; a fusion result stores them per modality."""
    if modalities_used:
        first = info.get(modalities_used[0])
        if isinstance(first, dict):
            return first
    return info


def summary_sections(s: SummaryInput) -> list[tuple[str, str]]:
    """``[(heading, text), ...]`` for the page, the PDF and the API.

    "Images used" (fusion models) and "Other findings" (multi-task heads) appear only when they
    apply, so a plain single-image model's summary is unchanged. An image the input check
    refused gets no finding at all: what was checked, why it was not assessed, what to do.
    """
    if s.status != "ok":
        return not_assessed_sections(s)
    p_dec = s.probabilities.get(s.decision, 0.0)
    kind = "calibrated probability" if s.calibrated else "score (not calibrated)"
    found = f"The model {s.model_name} suggests {s.decision}."
    if s.decision in s.priority:
        found += f" {s.decision.capitalize()} is a finding this model is set to prioritise."
    how = (
        f"It gives {s.decision} a {kind} of {pct(p_dec)}, which is {certainty_words(p_dec)} "
        "certainty."
    )
    if s.decision_threshold is not None and s.decision != s.label:
        how += (
            f" It is flagged because that probability reached the policy's safety threshold of "
            f"{pct(s.decision_threshold)} (set so that fewer {s.decision} cases are missed), "
            f"although {s.label} is more probable ({pct(s.probabilities.get(s.label, 0.0))})."
        )
    elif s.decision_threshold is not None:
        how += f" Its probability reached the policy threshold of {pct(s.decision_threshold)}."
    others = sorted(
        ((c, p) for c, p in s.probabilities.items() if c != s.decision), key=lambda t: -t[1]
    )
    if others:
        c2, p2 = others[0]
        how += f" The next most likely is {c2} ({pct(p2)})."
    if s.borderline:
        how += (
            " Borderline: a probability is close to its threshold ("
            + "; ".join(s.borderline)
            + "), so a small change in the image could change the decision."
        )
    checks = []
    if s.decision in s.priority:
        checks.append(
            f"Review the image for signs of {s.decision}. The heatmap shows the regions that most "
            "raised the model's score: check that they lie on anatomy, not on labels, markers or "
            "the image border."
        )
    else:
        checks.append(
            "No prioritised finding was suggested. This does not rule disease out: read the image "
            "as usual, and look at the heatmap only as a hint of what the model attended to."
        )
    info = main_preprocess_info(s.preprocess_info, s.modalities_used)
    exposure = info.get("exposure_status")
    if info.get("clahe_applied") or (exposure and exposure != "ok"):
        checks.append(
            f"Image quality was flagged (exposure: {exposure or 'unusual'}); contrast was "
            "enhanced (CLAHE) before the model saw it. Consider whether the image is adequate."
        )
    if p_dec < 0.7:
        checks.append("The model is not confident here; weigh it less than usual.")
    out = [("What was found", found), ("How sure", how)]
    if s.prediction_set is not None:
        cover = f"{s.coverage:.0%}" if s.coverage is not None else "the bundle's"
        shown = "{" + ", ".join(s.prediction_set) + "}"
        if s.uncertain:
            out.append(
                (
                    "Uncertain — human review",
                    f"At {cover} coverage the model cannot rule out {shown}: it does not "
                    "settle on one class for this image, so a person should read it.",
                )
            )
        else:
            out.append(
                (
                    "Prediction set",
                    f"{shown} — the only class the model keeps at {cover} coverage.",
                )
            )
    if s.input_check == "absent":
        out.append(("Input check", GATE_ABSENT_TEXT))
    used = modalities_text(s.modalities_used, s.modalities)
    if used is not None:
        text = f"The model used {used}."
        if s.modalities and set(s.modalities) - set(s.modalities_used or []):
            text += (
                " A learned placeholder stood in for the missing images, so this result rests "
                "on less information than a complete study; weigh it accordingly."
            )
        out.append(("Images used", text))
    if findings := head_findings(s.heads):
        out.append(
            (
                "Other findings",
                f"The same model, {s.model_name}, also outputs "
                + "; ".join(f.text for f in findings)
                + ". These are further model outputs with uncalibrated scores, not diagnoses: "
                "a clinician decides whether they hold.",
            )
        )
    out += [("What to check", " ".join(checks)), ("Who decides", DISCLAIMER)]
    return out


GATE_ABSENT_TEXT = (
    "Input check not available for this model (made before input checks): nothing verified "
    "that this image resembles the images it was trained on."
)


def not_assessed_sections(s: SummaryInput) -> list[tuple[str, str]]:
    """The summary of an image the input check refused: no class, no priority, no heatmap."""
    if s.status == "ungradable":
        what = "The image could not be graded, so the model did not assess it."
    else:
        what = (
            "The image does not look like the images this model was trained on, so the model "
            "did not assess it: any class it would give here would not be trustworthy."
        )
    return [
        ("Not assessed", what),
        ("Why", s.reason or "not recorded"),
        (
            "What to do",
            f"A person reads this image. Check that it is the kind of image {s.model_name} "
            "is meant for (modality, body part, view) and that the file is intact.",
        ),
        ("Who decides", DISCLAIMER),
    ]


def summary_text(s: SummaryInput) -> str:
    return "\n".join(f"{h}: {t}" for h, t in summary_sections(s))


def llm_rewrite(
    text: str, *, url: str, model: str, api_key_env: str, timeout_s: float = 20.0
) -> str:
    """Rewrite ``text`` in plainer words through an OpenAI-compatible chat endpoint.

    Raises ``RuntimeError`` on any failure; the caller keeps the generated summary then.
    """
    key = os.environ.get(api_key_env, "")
    body = {
        "model": model,
        "temperature": 0,
        "messages": [
            {
                "role": "system",
                "content": "Rewrite this decision-support summary for a clinician in plain, "
                "short sentences. Keep every number, the model name and the statement that a "
                "clinician decides. Add nothing that is not in the text.",
            },
            {"role": "user", "content": text},
        ],
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            payload = json.loads(resp.read(1_000_000))
        out = str(payload["choices"][0]["message"]["content"]).strip()
    except Exception as exc:
        raise RuntimeError(f"LLM rewrite failed: {exc}") from None
    if not out:
        raise RuntimeError("LLM rewrite returned nothing")
    return out[:4000]
