"""The fault proxy itself, against the real registry: each fault does what it says."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import Image
from tools.faultproxy import (
    Corrupt,
    Delay,
    DropBody,
    DropUpload,
    FaultProxy,
    RedirectBlobs,
    ReplaceBody,
    SetHeader,
    Status,
    Truncate,
    parse_fault,
)

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def conn(host: str) -> Iterator[http.client.HTTPConnection]:
    c = http.client.HTTPConnection(host, timeout=30)
    try:
        yield c
    finally:
        c.close()


Reply = tuple[int, dict[str, str], bytes]


def get(host: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    with conn(host) as c:
        c.request("GET", path, headers=headers or {})
        with c.getresponse() as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def blob_path(image: Image) -> str:
    return f"/v2/{image.repo}/blobs/{image.weights_digest}"


def image_blob(proxy: FaultProxy, image: Image) -> bytes:
    return get(proxy.upstream, blob_path(image))[2]


MANIFEST_ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def test_passthrough_keeps_bytes_and_logs(
    image: Image, proxy: FaultProxy, registry: RegistryServer
) -> None:
    direct = get(registry.host, blob_path(image))
    via = get(proxy.host, blob_path(image), {"Range": "bytes=10-99"})
    assert direct[0] == 200 and via[0] == 206
    assert via[2] == direct[2][10:100]
    (logged,) = proxy.wait_for(1)
    assert (logged.method, logged.status, logged.sent, logged.faults) == ("GET", 206, 90, ())
    assert logged.headers["range"] == "bytes=10-99"


def test_drop_body_cuts_after_n_bytes_then_stops_firing(image: Image, proxy: FaultProxy) -> None:
    proxy.set_faults([DropBody(after=1000, times=1)])
    with conn(proxy.host) as c:
        c.request("GET", blob_path(image))
        with c.getresponse() as r, pytest.raises(http.client.IncompleteRead) as cut:
            r.read()
    assert len(cut.value.partial) == 1000
    assert get(proxy.host, blob_path(image))[0] == 200
    assert [r.sent for r in proxy.wait_for(2)] == [1000, len(image_blob(proxy, image))]


def test_status_with_retry_after_for_the_first_k(image: Image, proxy: FaultProxy) -> None:
    proxy.set_faults([Status(code=429, retry_after="7", times=2, match="/manifests/")])
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    answers = [get(proxy.host, path, MANIFEST_ACCEPT) for _ in range(3)]
    assert [a[0] for a in answers] == [429, 429, 200]
    assert answers[0][1]["retry-after"] == "7"


def test_corrupt_respects_range_offsets(
    image: Image, proxy: FaultProxy, registry: RegistryServer
) -> None:
    good = get(registry.host, blob_path(image))[2]
    proxy.set_faults([Corrupt(offset=5000, length=2)])
    _, _, part = get(proxy.host, blob_path(image), {"Range": "bytes=4990-5009"})
    diff = [i + 4990 for i, (a, b) in enumerate(zip(part, good[4990:5010], strict=True)) if a != b]
    assert diff == [5000, 5001]
    _, _, outside = get(proxy.host, blob_path(image), {"Range": "bytes=0-99"})
    assert outside == good[:100]


def test_truncate_and_replace_manifest_bodies(image: Image, proxy: FaultProxy) -> None:
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    proxy.set_faults([Truncate(keep=10, times=1)])
    status, headers, body = get(proxy.host, path, MANIFEST_ACCEPT)
    assert (status, len(body), headers["content-length"]) == (200, 10, "10")
    proxy.set_faults([ReplaceBody(body=b"{nope", content_type="application/x-odd")])
    status, headers, body = get(proxy.host, path)
    assert body == b"{nope" and headers["content-type"] == "application/x-odd"
    assert "docker-content-digest" not in headers


def test_redirect_to_the_cdn_which_refuses_authorization(image: Image, proxy: FaultProxy) -> None:
    proxy.set_faults([RedirectBlobs()])
    status, headers, _ = get(proxy.host, blob_path(image))
    assert status == 307
    location = headers["location"]
    cdn, path = location.removeprefix("http://").split("/", 1)
    assert cdn == proxy.cdn_host != proxy.host
    ok = get(cdn, "/" + path, {"Range": "bytes=0-9"})
    refused = get(cdn, "/" + path, {"Authorization": "Bearer x"})
    assert (ok[0], len(ok[2]), refused[0]) == (206, 10, 400)
    proxy.wait_for(3)
    # (recorded by the handler threads as they finish: in either order)
    seen = {(r.headers.get("range"), r.headers.get("authorization")) for r in proxy.cdn_requests}
    assert seen == {("bytes=0-9", None), (None, "Bearer x")}


def test_header_rewrite_and_delay(image: Image, proxy: FaultProxy) -> None:
    proxy.set_faults([SetHeader(header="X-Odd", value="1", status=None), Delay(seconds=0.3)])
    status, headers, _ = get(proxy.host, "/v2/")
    assert status == 200 and headers["x-odd"] == "1"


def test_drop_upload_is_cut(image: Image, proxy: FaultProxy) -> None:
    proxy.set_faults([DropUpload(after=100)])
    with conn(proxy.host) as c:
        c.request("POST", f"/v2/{image.repo}/blobs/uploads/")
        with c.getresponse() as r:
            r.read()
            location = r.getheader("Location") or ""
    assert location.startswith(f"http://{proxy.host}/")  # Host kept: uploads come back here
    upload = location.removeprefix(f"http://{proxy.host}")
    with conn(proxy.host) as c:
        c.request("PATCH", upload, body=b"x" * 5000)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            c.getresponse()
    assert proxy.wait_for(2)[-1].faults == ("DropUpload",)


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("drop-body@1MiB,times=2", DropBody(after=1 << 20, times=2)),
        ("drop-upload@64K", DropUpload(after=64 << 10)),
        ("status@503,retry-after=2,every=3", Status(code=503, retry_after="2", every=3)),
        ("delay@1.5s,methods=GET+HEAD", Delay(seconds=1.5, methods=("GET", "HEAD"))),
        (
            "corrupt@4096,length=3,match=/blobs/a,b",
            Corrupt(offset=4096, length=3, match="/blobs/a,b"),
        ),
        ("truncate@100", Truncate(keep=100)),
        ("header@X-Odd=a b", SetHeader(header="X-Odd", value="a b")),
        ("redirect-blobs", RedirectBlobs()),
    ],
)
def test_parse_fault(spec: str, fault: object) -> None:
    assert parse_fault(spec) == fault


def test_runs_by_hand(registry: RegistryServer) -> None:
    helped = subprocess.run(
        [sys.executable, "tools/faultproxy.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "drop-body@N" in helped.stdout
    proc = subprocess.Popen(
        [
            sys.executable,
            "tools/faultproxy.py",
            "--upstream",
            registry.host,
            "-q",
            "--fault",
            "status@503,times=1",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        host = proc.stderr.readline().split()[1]
        assert get(host, "/v2/")[0] == 503
        assert get(host, "/v2/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
