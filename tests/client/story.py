"""A user story told through a client that openapi-python-client generated from Lectern's OpenAPI
document (tests/tests/generated_client.rs generates it and runs this file).

Only the generated client speaks to the API. httpx is used alone for what is not the API: the
presigned PUT to storage. The mail is read from a folder the test fills with what the SMTP server
received.

An instructor registers, verifies the email by following the link in the mail, creates a course,
uploads a thumbnail, a handout and five lessons (start, PUT to the presigned URL, complete), waits
for processing and publishes; a student registers and enrolls. Every answer is checked as the
typed value the document promises.

Environment: LECTERN_URL, LECTERN_MAIL_DIR, LECTERN_VIDEO (a small MP4 to upload).
"""

from __future__ import annotations

import email
import email.policy
import os
import pathlib
import re
import struct
import sys
import time
import zlib
from http import HTTPStatus
from uuid import UUID

import httpx
from lectern_client import AuthenticatedClient, Client
from lectern_client.api.auth import register, verify_email
from lectern_client.api.courses import (
    create_course,
    create_section,
    get_course,
    list_sections,
    publish,
    update_course,
)
from lectern_client.api.jobs import get_job
from lectern_client.api.learning import enroll, my_enrollments
from lectern_client.api.media import complete_upload, start_upload
from lectern_client.models import (
    AuthResponse,
    CourseDetail,
    CourseInput,
    Enrolled,
    EnrollOutcome,
    ErrorBody,
    JobState,
    JobView,
    Kind,
    PageEnrollmentView,
    PageSectionView,
    Published,
    Registration,
    Role,
    SectionInput,
    SectionView,
    StartUpload,
    TokenRequest,
    UploadCompleted,
    UploadStarted,
    UserView,
)
from lectern_client.types import UNSET, Response

BASE = os.environ["LECTERN_URL"]
MAIL_DIR = pathlib.Path(os.environ["LECTERN_MAIL_DIR"])
VIDEO = pathlib.Path(os.environ["LECTERN_VIDEO"]).read_bytes()
PASSWORD = "correct horse battery"


def step(text: str) -> None:
    print(f"story: {text}", flush=True)


def expect(response: Response, status: int, kind: type):
    """The answer has this status and parses into this generated type."""
    assert response.status_code == HTTPStatus(status), (
        f"expected {status}, got {response.status_code}: {response.content!r}"
    )
    assert isinstance(response.parsed, kind), (
        f"expected a {kind.__name__}, got {type(response.parsed).__name__}: {response.content!r}"
    )
    return response.parsed


def expect_error(response: Response, status: int, code: str) -> ErrorBody:
    body = expect(response, status, ErrorBody)
    assert body.error.code == code, f"expected {code}: {response.content!r}"
    return body


def mailed_token(to: str, link_word: str) -> str:
    """The token of the first mail to `to` whose text links to a URL containing `link_word`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in sorted(MAIL_DIR.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if to not in str(message["To"]):
                continue
            body = message.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            for url in re.findall(r"https?://\S+", text):
                found = re.search(r"[?&]token=([0-9a-f]+)", url)
                if link_word in url and found:
                    return found.group(1)
        time.sleep(0.1)
    raise AssertionError(f"no mail to {to} with a {link_word} link in {MAIL_DIR}")


def png() -> bytes:
    """A real 64x48 PNG (a gradient), made here so the story needs no file of its own."""
    width, height = 64, 48
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, 128)) for x in range(width))
        for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)


def upload(
    client: AuthenticatedClient,
    name: str,
    mime: str,
    data: bytes,
    course: UUID,
    section: UUID,
) -> tuple[int, UploadCompleted]:
    """Start, PUT the bytes where the API says, complete: the status and the typed answer."""
    started = expect(
        start_upload.sync_detailed(
            client=client,
            body=StartUpload(
                file_name=name,
                file_size=len(data),
                mime_type=mime,
                course_id=course,
                section_id=section,
                title=name,
            ),
        ),
        201,
        UploadStarted,
    )
    assert started.upload.method == "put", started.upload.method
    request = started.upload.request
    assert request is not None and request is not UNSET
    put = httpx.request(
        request.method,
        request.url,
        headers=dict(request.headers.additional_properties),
        content=data,
        timeout=30,
    )
    assert put.status_code == 200, f"presigned PUT: {put.status_code} {put.text}"
    response = complete_upload.sync_detailed(started.media.id, client=client, body=None)
    assert response.status_code in (HTTPStatus.OK, HTTPStatus.ACCEPTED), response.content
    return response.status_code, expect(response, response.status_code, UploadCompleted)


def wait_for(client: AuthenticatedClient, job: UUID) -> JobView:
    deadline = time.monotonic() + 120
    while True:
        view = expect(get_job.sync_detailed(job, client=client), 200, JobView)
        if view.state in (JobState.SUCCEEDED, JobState.FAILED) or time.monotonic() > deadline:
            assert view.state == JobState.SUCCEEDED, f"job {job}: {view.to_dict()}"
            return view
        time.sleep(0.2)


def main() -> None:
    anonymous = Client(base_url=BASE, raise_on_unexpected_status=True, timeout=httpx.Timeout(30))

    step("an instructor registers")
    signed_up = expect(
        register.sync_detailed(
            client=anonymous,
            body=Registration(
                email="ada@example.com",
                password=PASSWORD,
                full_name="Ada Lovelace",
                role="instructor",
            ),
        ),
        201,
        AuthResponse,
    )
    assert signed_up.user.role == Role.INSTRUCTOR
    assert signed_up.user.email_verified is False
    assert signed_up.token_type.lower() == "bearer"
    instructor = AuthenticatedClient(
        base_url=BASE,
        token=signed_up.access_token,
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30),
    )
    expect_error(
        register.sync_detailed(
            client=anonymous,
            body=Registration(email="ada@example.com", password=PASSWORD, full_name="Ada again"),
        ),
        409,
        "email_taken",
    )

    step("she follows the link in the verification mail")
    token = mailed_token("ada@example.com", "verify")
    verified = expect(
        verify_email.sync_detailed(client=anonymous, body=TokenRequest(token=token)), 200, UserView
    )
    assert verified.email_verified is True and verified.id == signed_up.user.id
    # A mailed token works once.
    expect_error(
        verify_email.sync_detailed(client=anonymous, body=TokenRequest(token=token)),
        422,
        "validation_failed",
    )

    step("she creates a course with a second section")
    course = expect(
        create_course.sync_detailed(
            client=instructor,
            body=CourseInput(
                title="Generated clients, from first principles",
                short_description="Typed calls from an OpenAPI document",
                description="How a client generated from an OpenAPI document calls every route "
                "with typed requests and typed answers, errors included.",
                learning_outcomes=["Generate a client", "Call the API", "Read typed errors"],
                price="0",
            ),
        ),
        201,
        CourseDetail,
    )
    assert course.status == "draft", course.status
    assert [s.title for s in course.sections] == ["Introduction"]
    lessons = expect(
        create_section.sync_detailed(
            course.id, client=instructor, body=SectionInput(title="Lessons")
        ),
        201,
        SectionView,
    )
    assert lessons.position == 2
    page = expect(
        list_sections.sync_detailed(str(course.id), client=instructor), 200, PageSectionView
    )
    assert [s.id for s in page.items] == [course.sections[0].id, lessons.id]
    assert page.next_cursor is None

    step("she uploads a thumbnail (processed: 202 with the job)")
    status, thumb = upload(instructor, "cover.png", "image/png", png(), course.id, lessons.id)
    assert status == HTTPStatus.ACCEPTED
    assert thumb.job is not None and thumb.job is not UNSET
    assert thumb.media.kind == Kind.IMAGE
    jobs = [thumb.job.id]

    step("a handout (no processing: 200, ready, no job)")
    status, handout = upload(
        instructor, "handout.pdf", "application/pdf", PDF, course.id, lessons.id
    )
    assert status == HTTPStatus.OK
    assert handout.job is None, handout.job
    assert handout.media.kind == Kind.DOCUMENT and handout.media.state == "ready"

    step("and five lessons (processed: 202 with the job)")
    for n in range(1, 6):
        status, video = upload(
            instructor, f"lesson-{n}.mp4", "video/mp4", VIDEO, course.id, lessons.id
        )
        assert status == HTTPStatus.ACCEPTED
        assert video.media.kind == Kind.VIDEO and video.job not in (None, UNSET)
        jobs.append(video.job.id)
    for job in jobs:
        wait_for(instructor, job)

    step("she sets the thumbnail and publishes")
    expect(
        update_course.sync_detailed(
            course.id, client=instructor, body=CourseInput(thumbnail_media_id=thumb.media.id)
        ),
        200,
        CourseDetail,
    )
    published = expect(publish.sync_detailed(course.id, client=instructor), 200, Published)
    assert published.course.status == "published", published.course.status
    public = expect(get_course.sync_detailed(course.slug, client=anonymous), 200, CourseDetail)
    assert public.id == course.id

    step("a student registers and enrolls")
    student_auth = expect(
        register.sync_detailed(
            client=anonymous,
            body=Registration(
                email="grace@example.com",
                password=PASSWORD,
                full_name="Grace Hopper",
                role="student",
            ),
        ),
        201,
        AuthResponse,
    )
    student = AuthenticatedClient(
        base_url=BASE,
        token=student_auth.access_token,
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30),
    )
    enrolled = expect(enroll.sync_detailed(course.slug, client=student), 201, Enrolled)
    assert enrolled.outcome == EnrollOutcome.CREATED
    assert enrolled.enrollment.course_id == course.id
    again = expect(enroll.sync_detailed(str(course.id), client=student), 200, Enrolled)
    assert again.outcome == EnrollOutcome.ALREADY_ENROLLED
    mine = expect(my_enrollments.sync_detailed(client=student), 200, PageEnrollmentView)
    assert [e.course_id for e in mine.items] == [course.id]
    assert mine.next_cursor is None

    step("typed refusals: the student cannot edit the course, nobody enrolls without a token")
    expect_error(
        update_course.sync_detailed(course.id, client=student, body=CourseInput(title="Mine now")),
        403,
        "not_course_owner",
    )
    expect_error(enroll.sync_detailed(course.slug, client=anonymous), 401, "unauthenticated")
    # Someone else's upload is not there for the student.
    expect_error(
        complete_upload.sync_detailed(handout.media.id, client=student, body=None), 404, "not_found"
    )
    step("done")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"story failed: {e}", file=sys.stderr)
        raise
