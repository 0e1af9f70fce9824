"""``r8imfs extract`` end to end against the real registry, checked with GNU tar."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import trio

from r8imfs.engine.codecs.toc import load_toc
from r8imfs.engine.readat import FileReadAt
from r8imfs.oci import mediatypes as mt
from r8imfs.ops.extract import weights_name
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.images import cli, publish_soci_v1, push, skopeo_json
from tests.helpers.registry import RegistryServer, start_registry
from tools.demoimage import tar_of


def _weights_image(
    registry: RegistryServer, repo: str, **kw: object
) -> tuple[str, dict[str, bytes]]:
    files = {
        "src/weights/model.bin": hashlib.sha256(b"seed").digest() * 40_000,
        "src/weights/sub/tokenizer.json": b'{"vocab": []}\n',
    }
    layers = [
        (tar_of({"etc/hostname": b"x\n"}), "ADD rootfs /", None),
        (
            tar_of({"src/predict.py": b"print(1)\n", "src/weights/stale.bin": b"old"}),
            "COPY . /src",
            None,
        ),
        (
            tar_of({"src/weights": None, **files, "src/weights/.wh.stale.bin": b""}),
            "COPY w /src/weights # weights",
            "weights",
        ),
    ]
    ref = f"{registry.host}/{repo}:v1"
    push(ref, layers=layers, **kw)
    return ref, {k.removeprefix("src/weights/"): v for k, v in files.items()}


def _read_tar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("manifest_type", "compression"),
    [(mt.DOCKER_MANIFEST, "gzip"), (mt.OCI_MANIFEST, "zstd"), (mt.OCI_MANIFEST, "none")],
)
def test_extract_to_file_and_gnu_tar_reads_it(
    registry: RegistryServer, repo_name: str, tmp_path: Path, manifest_type: str, compression: str
) -> None:
    ref, expected = _weights_image(
        registry, repo_name, manifest_type=manifest_type, compression=compression
    )
    out = tmp_path / "w.tar"
    proc = cli("extract", ref, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "model.bin" in proc.stderr and "sub/tokenizer.json" in proc.stderr
    listing = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True, check=True)
    assert sorted(listing.stdout.split()) == sorted(expected)
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(dest)], check=True)
    for name, body in expected.items():
        assert (dest / name).read_bytes() == body
    assert not list(tmp_path.glob(".*partial"))


def test_extract_stdout_and_dir(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    ref, expected = _weights_image(registry, repo_name)
    proc = subprocess.run(
        [sys.executable, "-m", "r8imfs", "extract", ref],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _read_tar(proc.stdout) == expected
    proc2 = cli("extract", ref, "--dir", str(tmp_path / "d"))
    assert proc2.returncode == 0, proc2.stderr
    got = {
        str(p.relative_to(tmp_path / "d")): p.read_bytes()
        for p in (tmp_path / "d").rglob("*")
        if p.is_file()
    }
    assert got == expected


def test_extract_falls_back_to_copy_src(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    layers = [
        (tar_of({"src/predict.py": b"x", "src/weights/a.bin": b"AAA"}), "COPY . /src", None),
        (tar_of({"src/other.txt": b"y"}), "RUN echo # weights", None),
    ]
    ref = f"{registry.host}/{repo_name}:v1"
    push(ref, layers=layers)
    out = tmp_path / "w.tar"
    proc = cli("extract", ref, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _read_tar(out.read_bytes()) == {"a.bin": b"AAA"}


def test_no_weights_is_exit_1_and_no_file(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    push(ref, layers=[(tar_of({"etc/x": b"1"}), "ADD x /", None)])
    out = tmp_path / "w.tar"
    proc = cli("extract", ref, "-o", str(out))
    assert proc.returncode == 1
    assert "no weights found" in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("src/weights/a", "a"),
        ("./src/weights/d/e.bin", "d/e.bin"),
        ("/src/weights/x", "x"),
        ("src/weights/", None),
        ("src/weights/../../etc/passwd", None),
        ("src/weights/a/./b", None),
        ("src/weights/.wh.gone", None),
        ("src/weightsX/a", None),
        ("src/predict.py", None),
    ],
)
def test_weights_name(path: str, name: str | None) -> None:
    assert weights_name(path) == name


# -- TOC layers (issue 13) ---------------------------------------------------------


def _toc_image(registry: RegistryServer, repo: str) -> tuple[str, dict[str, bytes], str]:
    """An ``r8imfs zstd`` image (zstd:chunked) whose weights sit in its ``COPY . /src``
    layer among much more code: (ref, weights by name, that layer's digest)."""
    weights = {"model.bin": os.urandom(3 * 1024 * 1024 + 11), "sub/tok.json": b"{}\n"}
    files: dict[str, bytes | str | None] = {"src/predict.py": b"print(1)\n"}
    files |= {f"src/lib/m{i}.so": os.urandom(1024 * 1024) for i in range(16)}
    files |= {f"src/weights/{k}": v for k, v in weights.items()}
    layers = [
        (tar_of({"etc/hostname": b"x\n"}), "ADD rootfs /", None),
        (tar_of(files), "COPY . /src", None),
    ]
    src = f"{registry.host}/{repo}:src"
    push(src, layers=layers)
    dest = f"{registry.host}/{repo}:z"
    proc = cli("zstd", src, dest)
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(
        cli_out("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    )
    layer = raw["layers"][1]
    assert "io.github.containers.zstd-chunked.manifest-checksum" in layer["annotations"]
    return dest, weights, layer["digest"]


def cli_out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def test_extract_reads_only_the_weights_chunks_of_a_toc_layer(
    registry: RegistryServer, repo_name: str, tmp_path: Path, proxy: CountingProxy
) -> None:
    ref, weights, digest = _toc_image(registry, repo_name)
    proxy.reset()
    proc = cli("extract", ref.replace(registry.host, proxy.host, 1), "--dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    got = {
        str(p.relative_to(tmp_path / "d")): p.read_bytes()
        for p in (tmp_path / "d").rglob("*")
        if p.is_file()
    }
    assert got == weights
    moved = proxy.blob_downloads().get(digest, 0)
    assert 0 < moved < 6 * 1024 * 1024, f"{moved} bytes of the 16 MiB code layer moved"
    # zstd layers only: a SOCI index could not serve them, so none is looked for
    assert not [x.path for x in proxy.exchanges if "/referrers/" in x.path or "sha256-" in x.path]


def test_extract_of_a_corrupted_toc_chunk_publishes_nothing(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    """The registry's copy of a weights chunk altered on disk: DigestMismatch/corrupt, no file."""
    ref, _, digest = _toc_image(registry, repo_name)
    storage = registry.workdir / "storage"
    blob = next(storage.rglob(f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data"))
    raw = json.loads(cli_out("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    with FileReadAt(blob) as f:
        toc = load_toc(f, raw["layers"][1]["annotations"])
    assert toc is not None
    model = next(x for x in toc.files if x.path == "src/weights/model.bin")
    data = bytearray(blob.read_bytes())
    at = (model.chunks[0].cstart + model.chunks[0].cend) // 2
    data[at : at + 8] = bytes(b ^ 0xFF for b in data[at : at + 8])
    blob.write_bytes(bytes(data))
    proc = cli("extract", ref, "--dir", str(tmp_path / "d"))
    assert proc.returncode != 0
    assert "model.bin" in proc.stderr and "layer 1" in proc.stderr, proc.stderr
    assert not [p for p in (tmp_path / "d").rglob("*") if p.is_file()]


# -- through a SOCI index ----------------------------------------------------------


def _soci_image(registry: RegistryServer, repo: str) -> tuple[str, dict[str, bytes]]:
    """A weights layer of noise and text (spans of both kinds), indexed by ``r8imfs index``."""
    text = b"".join(b"weight %d = %f\n" % (i, i / 7) for i in range(60_000))
    files = {
        "src/weights/model.bin": os.urandom(3 * 1024 * 1024) + text,
        "src/weights/sub/tokenizer.json": b'{"vocab": []}\n',
    }
    layers = [
        (tar_of({"etc/hostname": b"x\n"}), "ADD rootfs /", None),
        (tar_of({"src/weights": None, **files}), "COPY w /src/weights # weights", "weights"),
    ]
    ref = f"{registry.host}/{repo}:v1"
    push(ref, layers=layers)
    proc = cli("index", "--span-size", "64K", ref)
    assert proc.returncode == 0, proc.stderr
    return ref, {k.removeprefix("src/weights/"): v for k, v in files.items()}


def test_extract_through_soci_spans_gives_exact_bytes(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    ref, expected = _soci_image(registry, repo_name)
    out = tmp_path / "w.tar"
    proc = cli("extract", "-v", f"{ref}-soci", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "spans, inflated in parallel through zTOC" in proc.stderr
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(dest)], check=True)
    assert _files_under(dest) == expected

    proc = cli("extract", "-v", "--no-soci", f"{ref}-soci", "-o", str(tmp_path / "plain.tar"))
    assert proc.returncode == 0, proc.stderr
    assert "zTOC" not in proc.stderr
    assert (tmp_path / "plain.tar").read_bytes() == out.read_bytes()


def test_extract_with_a_hostile_ztoc_falls_back(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    ref, expected = _soci_image(registry, repo_name)
    good = _soci_index_layers(ref)
    other = {**good[0], "annotations": good[1]["annotations"]}  # another layer's zTOC
    trio.run(publish_soci_v1, ref, [good[0], other])
    proc = cli("extract", ref, "--dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    assert "is not usable: zTOC is for a blob of" in proc.stderr
    assert "inflating the layer on one core" in proc.stderr
    assert _files_under(tmp_path / "d") == expected


def _files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _soci_index_layers(ref: str) -> list[dict[str, Any]]:
    top = skopeo_json("inspect", "--tls-verify=false", "--raw", f"docker://{ref}-soci")
    repo = ref.rsplit(":", 1)[0]
    index = skopeo_json(
        "inspect", "--tls-verify=false", "--raw", f"docker://{repo}@{top['manifests'][1]['digest']}"
    )
    return list(index["layers"])


def test_extract_refuses_a_corrupted_span(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "registry", "open")
    try:
        ref, _ = _soci_image(server, "soci/corrupt")
        layer = _soci_index_layers(ref)[-1]["annotations"]["com.amazon.soci.image-layer-digest"]
        hexd = str(layer).split(":", 1)[1]
        blob = server.workdir / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        out = tmp_path / "w.tar"
        proc = cli("extract", f"{ref}-soci", "-o", str(out))
        assert proc.returncode == 1
        assert "hashes to sha256:" in proc.stderr and "its zTOC says" in proc.stderr
        assert not out.exists()
        assert not list(tmp_path.glob(".w.tar.*"))
    finally:
        server.stop()


def test_a_pinned_ztoc_stands_for_the_blob_digest_a_v1_one_does_not(tmp_path: Path) -> None:
    """SOCI v2 pins the zTOC by the manifest: its verified spans (and checkpoints,
    checked against the data) are the layer, so the blob digest is not computed.
    Changed bytes no span covers (the gzip header's MTIME) then change nothing;
    through a v1 index, or without SOCI, the blob digest catches them."""
    server = start_registry(tmp_path / "registry", "open")
    try:
        ref, expected = _soci_image(server, "soci/pinned")
        layers = _soci_index_layers(ref)
        trio.run(publish_soci_v1, ref, layers)  # the same zTOCs, for the plain manifest
        layer = layers[-1]["annotations"]["com.amazon.soci.image-layer-digest"]
        hexd = str(layer).split(":", 1)[1]
        blob = server.workdir / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        data = bytearray(blob.read_bytes())
        data[4:8] = b"\x01\x02\x03\x04"  # gzip MTIME
        blob.write_bytes(bytes(data))

        proc = cli("extract", "-v", f"{ref}-soci", "--dir", str(tmp_path / "v2"))
        assert proc.returncode == 0, proc.stderr
        assert "inflated in parallel" in proc.stderr
        assert _files_under(tmp_path / "v2") == expected

        for args, where in (([ref], "v1"), (["--no-soci", f"{ref}-soci"], "plain")):
            proc = cli("extract", "-v", *args, "--dir", str(tmp_path / where))
            assert proc.returncode == 1, (where, proc.stderr)
            assert f"blob {layer} is corrupt" in proc.stderr, (where, proc.stderr)
            assert ("SOCI v1 index" in proc.stderr) == (where == "v1"), proc.stderr
            assert not _files_under(tmp_path / where)
    finally:
        server.stop()


async def _upload_lying_ztoc(ref: str, good: dict[str, Any]) -> dict[str, Any]:
    """The weights layer's zTOC with one checkpoint window reversed (span digests
    intact), uploaded; its descriptor, annotations as ``good``'s."""
    from r8imfs.engine.codecs import ztoc
    from r8imfs.oci.reference import parse
    from r8imfs.registry.client import RegistryClient
    from r8imfs.registry.upload import upload_bytes

    repo = parse(ref).repository
    async with RegistryClient() as client:
        async with client.open_blob(repo, good["digest"]) as blob:
            data = b"".join([chunk async for chunk in blob.chunks()])
        z = ztoc.decode(data)
        span_size, cps = ztoc.decode_gzip_zinfo(z.checkpoints)
        cps[2] = dataclasses.replace(cps[2], window=bytes(reversed(cps[2].window)))
        lying = ztoc.encode(
            dataclasses.replace(z, checkpoints=ztoc.encode_gzip_zinfo(span_size, cps))
        )
        digest = (await upload_bytes(client, repo, lying)).digest
    return {**good, "digest": digest, "size": len(lying)}


def test_a_ztoc_that_does_not_fit_its_layer_is_caught_and_the_layer_streamed(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    """A v1 zTOC whose span digests are right but whose checkpoint window lies:
    the window check catches it (never wrong bytes), the layer is extracted
    the plain way, what the span path wrote taken back."""
    ref, expected = _soci_image(registry, repo_name)
    good = _soci_index_layers(ref)
    lying = trio.run(_upload_lying_ztoc, ref, good[-1])
    trio.run(publish_soci_v1, ref, [*good[:-1], lying])
    proc = cli("extract", "-v", ref, "--dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    assert "SOCI v1 index" in proc.stderr and "inflated in parallel" in proc.stderr
    assert "its zTOC does not fit the layer" in proc.stderr
    assert "checkpoint 2's window is not the 32 KiB decoded before it" in proc.stderr
    assert _files_under(tmp_path / "d") == expected
