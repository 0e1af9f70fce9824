"""zTOC build, encode, decode and validation; judged by the hand-written oracle."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile

import pytest

from r8imfs.engine.codecs import ztoc, ztocbuild
from r8imfs.engine.codecs.zran import WINDOW, Checkpoint
from r8imfs.errors import CorruptLayer
from tests.helpers.soci_oracle import check_gzip_ztoc, check_tar_ztoc, read_ztoc
from tests.helpers.tars import M, make_tar, payload

SPAN = 128 * 1024


def _gzip_layer() -> tuple[bytes, bytes]:
    tar = make_tar(
        [M("f", f"d{i % 5}/f{i}", payload(i * 3000 + 1, seed=i)) for i in range(200)]
        + [M("d", "d0/sub", mode=0o700), M("l", "ln", link="d0/f0"), M("h", "hl", link="d0/f5")]
    )
    return tar, gzip.compress(tar, mtime=0)


def test_gzip_ztoc_passes_the_independent_reader() -> None:
    tar, blob = _gzip_layer()
    z = ztocbuild.build_gzip(io.BytesIO(blob), span_size=SPAN)
    data = ztoc.encode(z)
    parsed = check_gzip_ztoc(data, blob, SPAN)
    assert parsed["version"] == "0.9"
    assert parsed["build_tool"] == ztocbuild.BUILD_TOOL
    assert parsed["max_span_id"] >= 3
    # where Go's tar reader stops: after the two zero blocks, before the blocking padding
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        last = tf.getmembers()[-1]
    assert parsed["uncompressed_size"] == last.offset_data + 1024
    assert len(tar) - 10240 < parsed["uncompressed_size"] <= len(tar)


def test_tar_ztoc_passes_the_independent_reader() -> None:
    tar = make_tar([M("f", f"f{i}", payload(70_000, seed=i)) for i in range(12)])
    z = ztocbuild.build_tar(io.BytesIO(tar), span_size=SPAN)
    check_tar_ztoc(ztoc.encode(z), tar, SPAN)
    assert z.max_span_id == (len(tar) - 1) // SPAN


def test_roundtrip_and_metadata() -> None:
    tar = make_tar(
        [
            M("d", "etc", mtime=1_700_000_000),
            M("f", "etc/x", b"data", pax={"SCHILY.xattr.user.k": "v", "mtime": "1700000000.25"}),
            M("l", "etc/l", link="x"),
            M("c", "dev/null", major=1, minor=3),
        ]
    )
    z = ztocbuild.build_gzip(io.BytesIO(gzip.compress(tar)), span_size=SPAN)
    assert ztoc.decode(ztoc.encode(z)) == z
    by_name = {f.name: f for f in z.files}
    assert by_name["etc/"].type == "dir"
    assert by_name["etc/"].mod_time == "2023-11-14T22:13:20Z"
    x = by_name["etc/x"]
    assert dict(x.xattrs)["SCHILY.xattr.user.k"] == "v"
    assert x.mod_time == "2023-11-14T22:13:20.25Z"
    assert by_name["dev/null"].type == "char"
    assert (by_name["dev/null"].devmajor, by_name["dev/null"].devminor) == (1, 3)
    oracle = read_ztoc(ztoc.encode(z))
    assert [f["name"] for f in oracle["files"]] == [f.name for f in z.files]


@pytest.mark.parametrize(
    ("pax", "want"),
    [
        (None, "2023-11-14T22:13:20Z"),
        ("1700000000.123456789", "2023-11-14T22:13:20.123456789Z"),
        ("-1.5", "1969-12-31T23:59:58.5Z"),
        ("0", "1970-01-01T00:00:00Z"),
    ],
)
def test_go_time(pax: str | None, want: str) -> None:
    assert ztocbuild.go_time(pax, 1_700_000_000 if pax is None else 0) == want


def test_not_a_tar_is_corrupt() -> None:
    blob = gzip.compress(b"x" * 5000)
    with pytest.raises(CorruptLayer):
        ztocbuild.build_gzip(io.BytesIO(blob))


# -- hostile zTOCs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good() -> tuple[ztoc.Ztoc, int]:
    _, blob = _gzip_layer()
    return ztocbuild.build_gzip(io.BytesIO(blob), span_size=SPAN), len(blob)


def _refused(z: ztoc.Ztoc, size: int, match: str) -> None:
    with pytest.raises(ztoc.InvalidZtoc, match=match):
        ztoc.validate(ztoc.decode(ztoc.encode(z)), size)


def test_valid_ztoc_validates(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    spans = ztoc.validate(z, size, SPAN)
    assert len(spans) == z.max_span_id + 1
    assert spans.cend[-1] == size and spans.uend[-1] == z.uncompressed_archive_size


def test_wrong_layer_size(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    _refused(z, size + 1, "blob of")


def test_wrong_span_size(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    with pytest.raises(ztoc.InvalidZtoc, match="span size"):
        ztoc.validate(z, size, 4 << 20)


def test_absurd_uncompressed_size(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    _refused(dataclasses.replace(z, uncompressed_archive_size=size * 2000), size, "uncompressed")
    _refused(dataclasses.replace(z, uncompressed_archive_size=-1), size, "uncompressed")


def test_digest_count_mismatch(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    _refused(dataclasses.replace(z, span_digests=z.span_digests[:-1]), size, "span digests")
    _refused(dataclasses.replace(z, max_span_id=z.max_span_id + 1), size, "span digests")


def test_bad_digest_string(good: tuple[ztoc.Ztoc, int]) -> None:
    z, _ = good
    bad = dataclasses.replace(z, span_digests=("md5:abc", *z.span_digests[1:]))
    with pytest.raises(ztoc.InvalidZtoc, match="sha256"):
        ztoc.decode(ztoc.encode(bad))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": "../../etc/passwd"}, "climbs"),
        ({"name": "a/../../b"}, "climbs"),
        ({"name": ""}, "empty"),
        ({"name": "a\0b"}, "NUL"),
        ({"type": "socket"}, "unknown type"),
        ({"uncompressed_offset": -512}, "outside"),
        ({"uncompressed_offset": 1 << 40}, "outside"),
        ({"uncompressed_size": 1 << 40}, "outside"),
        ({"uncompressed_offset": 513}, "outside"),
        ({"mode": -1}, "negative"),
    ],
)
def test_hostile_entry(good: tuple[ztoc.Ztoc, int], change: dict[str, object], match: str) -> None:
    z, size = good
    files = list(z.files)
    files[3] = dataclasses.replace(files[3], **change)  # type: ignore[arg-type]
    _refused(dataclasses.replace(z, files=tuple(files)), size, match)


def test_overlapping_entries(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    files = list(z.files)
    files[4] = dataclasses.replace(files[4], uncompressed_offset=files[3].uncompressed_offset)
    _refused(dataclasses.replace(z, files=tuple(files)), size, "overlaps")


def test_hardlink_target_climbing(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    files = [dataclasses.replace(z.files[0], type="hardlink", linkname="../x"), *z.files[1:]]
    _refused(dataclasses.replace(z, files=tuple(files)), size, "hardlink target")


def _with_checkpoints(z: ztoc.Ztoc, cps: list[Checkpoint]) -> ztoc.Ztoc:
    return dataclasses.replace(z, checkpoints=ztoc.encode_gzip_zinfo(SPAN, cps))


def test_checkpoints_out_of_order_or_range(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    _, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
    swapped = [cps[0], cps[2], cps[1], *cps[3:]]
    _refused(_with_checkpoints(z, swapped), size, "does not follow")
    far = [*cps[:-1], dataclasses.replace(cps[-1], cin=size + 10)]
    _refused(_with_checkpoints(z, far), size, "outside")
    bits = [*cps[:-1], dataclasses.replace(cps[-1], bits=9)]
    _refused(_with_checkpoints(z, bits), size, "outside")
    late = [dataclasses.replace(cps[0], out=5), *cps[1:]]
    _refused(_with_checkpoints(z, late), size, "first checkpoint")


def test_checkpoint_blob_of_the_wrong_length(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    _refused(dataclasses.replace(z, checkpoints=z.checkpoints[:-1]), size, "cannot hold")
    _refused(dataclasses.replace(z, checkpoints=b"\1\0"), size, "shorter")
    huge = struct.pack("<iq", 2**31 - 1, SPAN) + bytes(z.checkpoints[12:])
    _refused(dataclasses.replace(z, checkpoints=huge), size, "cannot hold")


def test_v1_blob_with_implied_first_checkpoint(good: tuple[ztoc.Ztoc, int]) -> None:
    z, size = good
    count = struct.unpack_from("<i", z.checkpoints)[0]
    blob = bytes(z.checkpoints)
    v1 = blob[:12] + blob[12 + ztoc.CHECKPOINT_SIZE :]
    assert struct.unpack_from("<i", v1)[0] == count
    span, cps = ztoc.decode_gzip_zinfo(v1)
    assert cps[0] == Checkpoint(10, 0, 0, bytes(WINDOW))
    assert cps[1:] == ztoc.decode_gzip_zinfo(z.checkpoints)[1][1:]
    ztoc.validate(dataclasses.replace(z, checkpoints=v1), size)


@pytest.mark.parametrize("cut", [0, 3, 4, 40, 200, -300])
def test_truncated_buffers_are_refused_cleanly(good: tuple[ztoc.Ztoc, int], cut: int) -> None:
    z, _ = good
    data = ztoc.encode(
        dataclasses.replace(z, checkpoints=z.checkpoints[: 12 + 2 * ztoc.CHECKPOINT_SIZE])
    )
    with pytest.raises(ztoc.InvalidZtoc):
        ztoc.decode(data[:cut])


def test_garbage_offsets_are_refused_cleanly() -> None:
    for root in (0xFFFFFFF0, 8, 12):
        data = struct.pack("<I", root) + bytes(range(256)) * 4
        with pytest.raises(ztoc.InvalidZtoc):
            ztoc.decode(data)
    # a table whose vector claims 2**31 entries
    with pytest.raises(ztoc.InvalidZtoc):
        ztoc.decode(struct.pack("<IiHHHIII", 8, -4, 8, 8, 4, 4, 0x7FFFFFFF, 0))


def test_uncompressed_zinfo_must_fit(good: tuple[ztoc.Ztoc, int]) -> None:
    tar = make_tar([M("f", "a", payload(300_000))])
    z = ztocbuild.build_tar(io.BytesIO(tar), span_size=SPAN)
    ztoc.validate(z, len(tar))
    _refused(
        dataclasses.replace(z, checkpoints=ztoc.encode_tar_zinfo(SPAN, len(tar) + 1)),
        len(tar),
        "TarZinfo",
    )
    _refused(
        dataclasses.replace(z, checkpoints=ztoc.encode_tar_zinfo(0, len(tar))), len(tar), "TarZinfo"
    )


def test_tiny_spans_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TarZinfo with 1-byte spans would make millions of spans: bounded."""
    tar = make_tar([M("f", "a", payload(300_000))])
    z = ztocbuild.build_tar(io.BytesIO(tar), span_size=SPAN)
    monkeypatch.setattr(ztoc, "MAX_SPANS", 10)
    _refused(
        dataclasses.replace(z, checkpoints=ztoc.encode_tar_zinfo(1024, len(tar))),
        len(tar),
        "too many",
    )


def test_gzip_header_with_a_file_name() -> None:
    """gzip(1) stores the file name: the first checkpoint comes after it."""
    tar = make_tar([M("f", f"f{i}", payload(50_000, seed=i)) for i in range(10)])
    buf = io.BytesIO()
    with gzip.GzipFile(filename="layer.tar", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(tar)
    blob = buf.getvalue()
    z = ztocbuild.build_gzip(io.BytesIO(blob), span_size=SPAN)
    _, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
    assert cps[0].cin == 10 + len(b"layer.tar\0")
    check_gzip_ztoc(ztoc.encode(z), blob, SPAN)
