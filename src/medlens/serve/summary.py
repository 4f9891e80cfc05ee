"""Plain-language summary of one result: what was found, how sure, what to check, who decides.

Generated from the numbers alone (deterministic, testable, no network). An optional rewrite by
an LLM behind an OpenAI-compatible URL is off by default; it receives only this summary text (no
image, no file name, no user) and its output is always shown *beside* the numbers, labelled as a
machine rewrite. The API key is read from the environment variable named in the settings.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from typing import Any

from medlens.inference import DISCLAIMER


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


def certainty_words(p: float) -> str:
    if p >= 0.9:
        return "high"
    if p >= 0.7:
        return "moderate"
    if p >= 0.5:
        return "low"
    return "very low"


def pct(p: float) -> str:
    return f"{100 * p:.0f}%"


def summary_sections(s: SummaryInput) -> list[tuple[str, str]]:
    """``[(heading, text), ...]`` for the page, the PDF and the API."""
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
    exposure = s.preprocess_info.get("exposure_status")
    if s.preprocess_info.get("clahe_applied") or (exposure and exposure != "ok"):
        checks.append(
            f"Image quality was flagged (exposure: {exposure or 'unusual'}); contrast was "
            "enhanced (CLAHE) before the model saw it. Consider whether the image is adequate."
        )
    if p_dec < 0.7:
        checks.append("The model is not confident here; weigh it less than usual.")
    return [
        ("What was found", found),
        ("How sure", how),
        ("What to check", " ".join(checks)),
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
