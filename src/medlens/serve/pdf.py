"""PDF report of one result (reportlab): what a clinician files or prints.

Decision first, then how sure, the images (original, preprocessed, heatmap), calibrated
probabilities as bars with the policy thresholds drawn and labelled, a multi-task model's other
findings (each head's output, marked as a model output a clinician decides on), the
plain-language summary, the model's held-out test figures with their intervals, the provenance
(model, bundle name and SHA-256, what it was trained on, date, accession number if one was
entered, images used by a fusion model) and a reviewer sign-off block. The disclaimer is on every
page, and a demonstration model trained on synthetic data says so at the top of every page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime

from medlens.inference import DEMO_NOTICE, DISCLAIMER
from medlens.serve.formatting import pct


@dataclass
class ReportData:
    result_id: str
    display_name: str
    created_at: datetime
    model_name: str
    bundle_name: str
    bundle_sha256: str
    intended_use: str
    decision: str
    label: str
    confidence_decision: float
    decision_threshold: float | None
    calibrated: bool
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    summary: list[tuple[str, str]]
    borderline: list[str]
    original_png: bytes | None
    preprocessed_png: bytes | None
    heatmap_png: bytes | None
    heatmap_method: str
    heatmap_note: str | None
    findings: list[tuple[str, str]] = field(default_factory=list)  # (head, "stage 2 (71%)")
    modalities: str | None = None  # fusion models: "MRI only — CT missing"
    accession: str | None = None  # user-entered accession / study number
    synthetic: bool = False  # a demonstration model trained on synthetic data
    training_data: str | None = None  # "48 synthetic images (generated chest_xray phantoms)"
    test_figures: list[tuple[str, str]] = field(default_factory=list)  # (name, "0.91 [...]")
    test_caption: str = ""  # "12 images, 95 % intervals"
    status: str = "ok"  # "ok" | "ungradable" | "out_of_distribution": not assessed unless ok
    status_text: str = ""  # "not assessed: the image cannot be graded"
    reason: str | None = None  # why the input check refused the image
    prediction_set: str | None = None  # "{normal, pneumonia}" (None: the model has no sets)
    uncertain: bool = False  # the set is not a single class: human review
    gate_note: str | None = None  # "input check not available for this model (...)"
    heatmap_evidence: str | None = None  # one line of localisation evidence for the heatmap


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_pdf(d: ReportData) -> bytes:
    from reportlab.graphics.shapes import Drawing, Line, Rect, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        Image,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    styles = getSampleStyleSheet()
    body = styles["BodyText"]
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10)
    head = ParagraphStyle("head", parent=styles["Heading1"], fontSize=16, spaceAfter=4)
    big = ParagraphStyle("big", parent=body, fontSize=14, leading=18, spaceAfter=2)
    buf = io.BytesIO()

    def footer(canvas, doc) -> None:  # type: ignore[no-untyped-def]
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(15 * mm, 10 * mm, DISCLAIMER)
        canvas.drawRightString(195 * mm, 10 * mm, f"page {doc.page}")
        if d.synthetic:
            canvas.setFont("Helvetica-Bold", 8)
            canvas.setFillColor(colors.HexColor("#b42318"))
            canvas.drawString(15 * mm, 290 * mm, DEMO_NOTICE)
        canvas.restoreState()

    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=14 * mm,
        bottomMargin=18 * mm,
        title=f"medlens result {d.result_id}",
        author="medlens",
        subject="Decision-support report",
    )
    story: list = [Paragraph("medlens decision-support report", head)]
    if d.synthetic:
        story.append(Paragraph(f"<b>{_esc(DEMO_NOTICE)}</b>", body))
    if d.accession:
        story.append(Paragraph(f"Accession / study: <b>{_esc(d.accession)}</b>", body))
    kind = "calibrated probability" if d.calibrated else "uncalibrated score"
    assessed = d.status == "ok"
    if not assessed:
        story.append(Paragraph(f"<b>Not assessed</b> &mdash; {_esc(d.status_text)}", big))
        story.append(Paragraph(f"<b>Why:</b> {_esc(d.reason or 'not recorded')}", body))
        story.append(
            Paragraph(
                "The model gives no finding for this image: no decision, priority or heatmap. "
                "A person reads it.",
                body,
            )
        )
    else:
        story.append(
            Paragraph(
                f"<b>Decision: {_esc(d.decision)}</b> &mdash; {kind} {pct(d.confidence_decision)}",
                big,
            )
        )
        if d.decision_threshold is not None:
            rule = f"policy threshold {pct(d.decision_threshold)} for {_esc(d.decision)} fired"
        else:
            rule = "no threshold fired: the most probable class decides"
        story.append(Paragraph(f"Rule: {rule}. Most probable class: {_esc(d.label)}.", body))
        if d.uncertain and d.prediction_set:
            story.append(
                Paragraph(
                    f"<b>Uncertain &mdash; human review:</b> prediction set "
                    f"{_esc(d.prediction_set)}; the model cannot rule out more than one class.",
                    body,
                )
            )
        elif d.prediction_set:
            story.append(Paragraph(f"Prediction set: {_esc(d.prediction_set)}.", body))
    if d.gate_note:
        story.append(Paragraph(f"<b>Input check:</b> {_esc(d.gate_note)}.", body))
    if d.borderline:
        story.append(Paragraph("<b>Borderline:</b> " + _esc("; ".join(d.borderline)), body))
    if d.modalities:
        story.append(Paragraph(f"<b>Images used:</b> {_esc(d.modalities)}.", body))
    story.append(Paragraph(f"<b>{_esc(DISCLAIMER)}</b>", body))
    story.append(Spacer(1, 4 * mm))

    # Images side by side.
    cells, captions = [], []
    for png, cap in (
        (d.original_png, "Original"),
        (d.preprocessed_png, "Preprocessed (model input view)"),
        (
            d.heatmap_png,
            f"Heatmap ({d.heatmap_method})" + (f" for {d.decision}" if assessed else ""),
        ),
    ):
        if png:
            img = Image(io.BytesIO(png))
            scale = min(56 * mm / img.imageWidth, 56 * mm / img.imageHeight)
            img.drawWidth, img.drawHeight = img.imageWidth * scale, img.imageHeight * scale
            cells.append(img)
        else:
            cells.append(Paragraph(_esc(d.heatmap_note or "image unavailable"), small))
        captions.append(Paragraph(_esc(cap), small))
    t = Table([cells, captions], colWidths=[60 * mm] * 3)
    t.setStyle(
        TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")])
    )
    story += [t, Spacer(1, 2 * mm)]
    if d.heatmap_png and d.heatmap_evidence:
        story.append(Paragraph(_esc(d.heatmap_evidence), small))
    story.append(Spacer(1, 2 * mm))

    # Probability bars with the thresholds drawn where they lie, each labelled.
    if assessed:
        story.append(Paragraph(f"<b>Probabilities</b> ({kind})", body))
    items = sorted(d.probabilities.items(), key=lambda kv: -kv[1])
    marks = {c: t for c, t in d.thresholds.items() if t is not None and 0.0 < t < 1.0}
    row_h, width, x0 = 20, 110 * mm, 34 * mm
    drawing = Drawing(180 * mm, row_h * len(items) + 6)
    for i, (c, p) in enumerate(items):
        y = row_h * (len(items) - 1 - i) + 4
        drawing.add(String(0, y + 3, c[:22], fontName="Helvetica", fontSize=9))
        drawing.add(Rect(x0, y, width, 10, fillColor=colors.HexColor("#e6e9ef"), strokeColor=None))
        fill = colors.HexColor("#b42318") if c == d.decision else colors.HexColor("#475467")
        drawing.add(Rect(x0, y, width * p, 10, fillColor=fill, strokeColor=None))
        drawing.add(String(x0 + width + 6, y + 2, pct(p, 1), fontName="Helvetica", fontSize=9))
        if c in marks:
            x = x0 + width * marks[c]
            drawing.add(
                Line(x, y - 2, x, y + 13, strokeWidth=1.8, strokeColor=colors.HexColor("#101828"))
            )
            drawing.add(
                String(
                    x + 2, y + 11, f"threshold {pct(marks[c])}", fontName="Helvetica", fontSize=6.5
                )
            )
    if assessed:
        story.append(drawing)
    if marks and assessed:
        listed = ", ".join(f"{_esc(c)} {pct(t)}" for c, t in marks.items())
        story.append(Paragraph(f"Vertical marks: the policy's thresholds ({listed}).", small))
    elif assessed:
        story.append(
            Paragraph("No policy threshold applies: the most probable class decides.", small)
        )
    story.append(Spacer(1, 3 * mm))

    if d.findings:
        story.append(Paragraph("<b>Other findings</b> (model outputs)", body))
        ft = Table(
            [
                [Paragraph(f"<b>{_esc(a)}</b>", small), Paragraph(_esc(b), small)]
                for a, b in d.findings
            ],
            colWidths=[38 * mm, 142 * mm],
        )
        ft.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey)]))
        story.append(ft)
        story.append(
            Paragraph(
                f"Further outputs of {_esc(d.model_name)}; their scores are not calibrated. "
                "They are model outputs, not diagnoses: a clinician decides whether they hold.",
                small,
            )
        )
        story.append(Spacer(1, 3 * mm))

    for h, text in d.summary:
        story.append(Paragraph(f"<b>{_esc(h)}.</b> {_esc(text)}", body))
    story.append(Spacer(1, 3 * mm))

    caption = f" ({_esc(d.test_caption)})" if d.test_caption else ""
    story.append(Paragraph(f"<b>Model performance on held-out test data</b>{caption}", body))
    if d.test_figures:
        ft = Table(
            [[Paragraph(_esc(a), small), Paragraph(_esc(b), small)] for a, b in d.test_figures],
            colWidths=[38 * mm, 142 * mm],
        )
        ft.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey)]))
        story.append(ft)
    else:
        story.append(Paragraph("No test figures are recorded for this model.", small))
    story.append(Spacer(1, 3 * mm))

    prov = [
        ["Result", d.result_id],
        ["Accession / study", d.accession or "not given"],
        ["File (display name)", d.display_name],
        ["Date (UTC)", d.created_at.strftime("%Y-%m-%d %H:%M")],
        ["Model", d.model_name],
        ["Bundle", d.bundle_name],
        ["Bundle SHA-256", d.bundle_sha256],
        ["Intended use", d.intended_use or "-"],
        ["Trained on", d.training_data or "not recorded (the model is no longer loaded)"],
    ]
    if d.modalities:
        prov.append(["Images used", d.modalities])
    pt = Table(
        [[Paragraph(_esc(a), small), Paragraph(_esc(b), small)] for a, b in prov],
        colWidths=[38 * mm, 142 * mm],
    )
    pt.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey)]))
    story.append(pt)

    # The clinician's sign-off: the report is decision support until someone signs it.
    story += [Spacer(1, 6 * mm), Paragraph("<b>Reviewer sign-off</b>", body)]
    line = "_" * 34
    sign = Table(
        [
            [Paragraph("Reviewed by (name)", small), Paragraph(line, small)],
            [Paragraph("Signature", small), Paragraph(line, small)],
            [Paragraph("Date", small), Paragraph(line, small)],
            [Paragraph("Clinician's conclusion", small), Paragraph(line, small)],
        ],
        colWidths=[38 * mm, 142 * mm],
        rowHeights=[9 * mm] * 4,
    )
    story.append(sign)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
