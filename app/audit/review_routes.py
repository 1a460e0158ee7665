"""/v1/audit/events: custodians review the enquiries about their own authority's children.

The queries, the authority filter and the audit of each read are app/audit/review.py's.
"""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.audit.deps import Reviewer
from app.audit.review import (
    AuditEventPage,
    EnquiryExport,
    EnquiryListQuery,
    EnquirySearch,
    PageQuery,
    entry_page,
    export_csv,
    list_page,
    search_page,
)
from app.deps import SessionDep
from app.errors import responses

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get(
    "/events",
    response_model=AuditEventPage,
    summary="Enquiries about your authority's children, newest first",
)
async def list_enquiries(
    request: Request,
    reviewer: Reviewer,
    session: SessionDep,
    query: Annotated[EnquiryListQuery, Query()],
) -> AuditEventPage:
    return await list_page(session, request, reviewer, query)


@router.post(
    "/events/search",
    response_model=AuditEventPage,
    summary="Enquiries about your authority's children, filtered by the child's NHS number too",
)
async def search_enquiries(
    request: Request, reviewer: Reviewer, session: SessionDep, search: EnquirySearch
) -> AuditEventPage:
    return await search_page(session, request, reviewer, search)


@router.get(
    "/entries/{entry_id}/enquiries",
    response_model=AuditEventPage,
    responses=responses("entry_not_found"),
    summary="Who has asked about this child",
)
async def enquiries_about_entry(
    entry_id: uuid.UUID,
    request: Request,
    reviewer: Reviewer,
    session: SessionDep,
    page: Annotated[PageQuery, Query()],
) -> AuditEventPage:
    return await entry_page(session, request, reviewer, entry_id, page)


@router.post(
    "/events/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "One header line, then one line per enquiry, newest first.",
        },
    },
    summary="Export enquiries about your authority's children as CSV (itself audited)",
)
async def export_enquiries(
    request: Request, reviewer: Reviewer, session: SessionDep, export: EnquiryExport
) -> StreamingResponse:
    chunks, filename = await export_csv(session, request, reviewer, export)
    headers: dict[str, Any] = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers=headers,
    )
