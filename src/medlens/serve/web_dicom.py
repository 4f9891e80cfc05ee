"""Result pages' DICOM downloads: the Structured Report and the encapsulated PDF report
(:mod:`.dicom_out`), for the signed-in owner (or an admin) only, like every result route."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from medlens.serve import services
from medlens.serve.deps import DB, CurrentUser, page_router, state_of

router = page_router()


def _download(data: bytes, result_id: str, kind: str) -> Response:
    return Response(
        data,
        media_type="application/dicom",
        headers={
            "Content-Disposition": f'attachment; filename="medlens-{result_id[:8]}-{kind}.dcm"'
        },
    )


@router.get("/results/{result_id}/dicom-sr.dcm")
def result_dicom_sr(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    from medlens.serve.dicom_out import result_sr

    r = services.get_result(db, user, result_id)
    return _download(result_sr(state_of(request), r), r.id, "sr")


@router.get("/results/{result_id}/dicom-pdf.dcm")
def result_dicom_pdf(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    from medlens.serve.dicom_out import result_pdf

    r = services.get_result(db, user, result_id)
    return _download(result_pdf(state_of(request), r), r.id, "pdf")
