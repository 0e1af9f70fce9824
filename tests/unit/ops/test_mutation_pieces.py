"""Pure pieces of the writing commands: config edits, destinations, progress text,
and the synchronous core of gzip→seekable-zstd recompression."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest
import zstandard

from r8imfs.cli.progress import TerminalTransfers, format_eta, format_line
from r8imfs.engine.codecs.zstdindex import read_seek_table
from r8imfs.engine.readat import BytesReadAt
from r8imfs.errors import CorruptLayer, DigestMismatch, UsageError
from r8imfs.image.recompress import recompress_file, verify
from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from r8imfs.oci.reference import parse, parse_repository
from r8imfs.ops.common import choose_destination

# -- config edits -----------------------------------------------------------------


def _config() -> dict[str, object]:
    return {
        "rootfs": {"type": "layers", "diff_ids": ["sha256:a", "sha256:b", "sha256:c"]},
        "history": [
            {"created_by": "ADD os"},
            {"created_by": "ENV X=1", "empty_layer": True},
            {"created_by": "COPY . /src"},
            {"created_by": "COPY w # weights", "comment": "weights"},
        ],
    }


def test_drop_layers_keeps_empty_history() -> None:
    out = mutate.drop_layers(_config(), {2})
    assert out["rootfs"]["diff_ids"] == ["sha256:a", "sha256:b"]
    assert [h["created_by"] for h in out["history"]] == ["ADD os", "ENV X=1", "COPY . /src"]


def test_append_history_keeps_the_entry() -> None:
    entry = {"created": "2020-01-01T00:00:00Z", "created_by": "X # weights", "comment": "weights"}
    out = mutate.append_history(_config(), [("sha256:d", entry), ("sha256:e", None)])
    assert out["rootfs"]["diff_ids"][-2:] == ["sha256:d", "sha256:e"]
    assert out["history"][-2] == entry
    assert "created" in out["history"][-1]
    assert len(out["history"]) == len(_config()["history"]) + 2  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("layer", "manifest", "want"),
    [
        (mt.OCI_LAYER_GZIP, mt.DOCKER_MANIFEST, mt.DOCKER_LAYER_GZIP),
        (mt.DOCKER_LAYER_GZIP, mt.OCI_MANIFEST, mt.OCI_LAYER_GZIP),
        (mt.OCI_LAYER_ZSTD, mt.OCI_MANIFEST, mt.OCI_LAYER_ZSTD),
        (mt.OCI_LAYER, mt.DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.diff.tar"),
        (mt.DOCKER_LAYER_FOREIGN_GZIP, mt.OCI_MANIFEST, mt.OCI_LAYER_NONDIST_GZIP),
        ("application/x-unknown", mt.OCI_MANIFEST, "application/x-unknown"),
    ],
)
def test_convert_layer_type(layer: str, manifest: str, want: str) -> None:
    assert mutate.convert_layer_type(layer, manifest) == want


# -- destinations ---------------------------------------------------------------------

H = "reg.example"


@pytest.mark.parametrize(
    ("source", "dest", "want", "noted"),
    [
        ("reg.example/a/b:v1", None, "reg.example/a/b:v1-zstd", True),
        (f"reg.example/a/b@sha256:{'1' * 64}", None, "reg.example/a/b:latest-zstd", True),
        ("reg.example/a/b:v1", "reg.example/a/b:v1", "reg.example/a/b:v1", False),
        ("reg.example/a/b:v1", "reg.example/c/d", "reg.example/c/d:latest", True),
        ("reg.example/a/b:v1", "reg.example/a/b", "reg.example/a/b:latest", True),
    ],
)
def test_choose_destination(source: str, dest: str | None, want: str, noted: bool) -> None:
    got, note = choose_destination(
        parse(source, H), parse_repository(dest, H) if dest else None, "zstd"
    )
    assert str(got) == want
    assert (note is not None) is noted


def test_untagged_destination_never_overwrites_the_source_tag() -> None:
    with pytest.raises(UsageError, match="overwrite"):
        choose_destination(parse("reg.example/a/b", H), parse_repository("reg.example/a/b", H), "x")
    with pytest.raises(UsageError, match="digest"):
        choose_destination(
            parse("reg.example/a/b", H),
            parse_repository(f"reg.example/a/b@sha256:{'2' * 64}", H),
            "x",
        )


# -- progress ----------------------------------------------------------------------------


def test_progress_text() -> None:
    line = format_line("layer x", 1024 * 1024, 4 * 1024 * 1024, 1.0)
    assert "1.0 MiB / 4.0 MiB" in line
    assert "1.0 MiB/s" in line
    assert "ETA 0:03" in line
    assert format_eta(3725) == "1:02:05"
    assert "KiB" in format_line("x" * 300, 2048, None, 1.0, width=60)


def test_progress_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, plain, tty = io.StringIO(), io.StringIO(), Tty()
    for stream, q in ((quiet, True), (plain, False), (tty, False)):
        board = TerminalTransfers.terminal(q, stream)
        bar = board.bar("layer", 100)
        bar.advance(50)
        bar.finish()
        board.close()
    assert quiet.getvalue() == plain.getvalue() == ""
    assert "layer" in tty.getvalue()
    assert "done" in tty.getvalue()


# -- recompression core ---------------------------------------------------------------------


def _recompress(
    blob: bytes, compression: str = "gzip", frame: int = 64 * 1024
) -> tuple[bytes, str]:
    out = io.BytesIO()
    done = recompress_file(
        io.BytesIO(blob),
        compression,
        lambda b: None if out.write(b) else None,
        frame_size=frame,
        threads=2,
    )
    assert done.source_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    return out.getvalue(), done.diff_id


def test_recompress_gzip_members_and_padding() -> None:
    tar = os.urandom(100_000) + b"text " * 40_000
    blob = gzip.compress(tar[:70_000]) + gzip.compress(tar[70_000:]) + b"\0" * 512
    data, diff_id = _recompress(blob)
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    assert reader.read() == tar
    table = read_seek_table(BytesReadAt(data))
    assert table is not None
    assert len(table.ustarts) == -(-len(tar) // (64 * 1024))


def test_recompress_plain_layer() -> None:
    tar = b"plain tar bytes" * 1000
    data, diff_id = _recompress(tar, "none")
    assert diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize(
    "blob",
    [gzip.compress(b"x" * 100_000)[:-20], b"not gzip at all", b""],
    ids=["cut", "junk", "empty"],
)
def test_recompress_refuses_broken_gzip(blob: bytes) -> None:
    with pytest.raises(CorruptLayer):
        _recompress(blob)


def test_verify_names_the_mismatch() -> None:
    blob = gzip.compress(b"abc")
    done = recompress_file(io.BytesIO(blob), "gzip", lambda _: None)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    verify(done, digest, done.diff_id)
    with pytest.raises(DigestMismatch, match="diff_id"):
        verify(done, digest, "sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match="downloaded as"):
        verify(done, "sha256:" + "1" * 64, None)
