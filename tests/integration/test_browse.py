"""``ls``, ``cat``, ``cp`` and ``tensors`` against the real registry, without FUSE.

One two-layer image, pushed gzip (Docker manifest), zstd and uncompressed
(OCI): a whited-out file, an opaque directory, a ``/lib -> usr/lib``
symlink to walk through, an executable, and model files under
``src/weights/`` (two safetensors made by the ``safetensors`` package, one
GGUF made by the ``gguf`` package) next to symlinks that point outside the
weights directory. Expected trees come from ``fusekit.build_reference``
(no r8imfs code); tensors are checked against ``safetensors.safe_open`` and
``gguf.GGUFReader`` on the same bytes. Every command also runs once in a
mount namespace where ``/dev/fuse`` is ``/dev/null``, where ``r8imfs
mount`` itself fails.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

from r8imfs.cache.blobcache import DEFAULT_BLOCK_SIZE
from r8imfs.oci import mediatypes as mt
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.fuse import MTIME, Member, build_reference, make_tar
from tests.helpers.images import cli, push
from tests.helpers.registry import RegistryServer

MANIFEST_TYPES = {"gzip": mt.DOCKER_MANIFEST, "zstd": mt.OCI_MANIFEST, "none": mt.OCI_MANIFEST}
BIG = os.urandom(9 * 1024 * 1024 + 17)  # more than two 4 MiB blocks, not aligned


@functools.cache
def _safetensors(seed: int) -> bytes:
    """Cached: the library writes ``__metadata__`` in hash order, different per call."""
    rng = np.random.default_rng(seed)
    return save(
        {
            "embed.weight": rng.standard_normal((64, 32)).astype(np.float16),
            "layers.0.bias": rng.standard_normal(32).astype(np.float32),
            "layers.0.mask": rng.integers(0, 2, (3, 5, 7)).astype(np.bool_),
            "scalar": np.array(7, dtype=np.int64),
        },
        metadata={"format": "pt", "seed": str(seed)},
    )


def _gguf(path: Path) -> bytes:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("test.answer", 42)
    writer.add_string("test.note", "hello")
    writer.add_array("test.vocab", [f"tok{i}" for i in range(100)])
    writer.add_tensor("tok_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.add_tensor("norm.weight", np.arange(8, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    gguf_bytes = _gguf(tmp_path_factory.mktemp("gguf") / "m.gguf")
    base = make_tar(
        [
            Member("etc", "d"),
            Member("etc/hostname", data=b"base\n"),
            Member("etc/gone", data=b"whited out\n"),
            Member("usr", "d"),
            Member("usr/lib", "d"),
            Member("usr/lib/libx.so", data=b"lib bytes\n"),
            Member("lib", "l", link="usr/lib"),
            Member("opt", "d"),
            Member("opt/dir", "d"),
            Member("opt/dir/old", data=b"old\n"),
        ]
    )
    top = make_tar(
        [
            Member("etc/.wh.gone"),
            Member("opt/dir/.wh..wh..opq"),
            Member("opt/dir/new", data=b"new\n"),
            Member("src", "d"),
            Member("src/run.sh", data=b"#!/bin/sh\necho hi\n", mode=0o755),
            Member("src/big.bin", data=BIG),
            Member("src/weights", "d", mode=0o750),
            Member("src/weights/model.safetensors", data=_safetensors(1)),
            Member("src/weights/sub", "d"),
            Member("src/weights/sub/extra.safetensors", data=_safetensors(2)),
            Member("src/weights/sub/model.gguf", data=gguf_bytes),
            Member("src/weights/link-abs", "l", link="/etc/hostname"),
            Member("src/weights/link-up", "l", link="../../etc"),
        ]
    )
    return [base, top]


@pytest.fixture(scope="module", params=sorted(MANIFEST_TYPES))
def image(request: pytest.FixtureRequest, registry: RegistryServer, layers: list[bytes]) -> str:
    compression = request.param
    ref = f"{registry.host}/browse/{compression}:v1"
    push(
        ref,
        layers=[(layers[0], "base", None), (layers[1], "COPY . /src", None)],
        manifest_type=MANIFEST_TYPES[compression],
        compression=compression,
    )
    return ref


@pytest.fixture(scope="module")
def reference(layers: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reference(layers, tmp_path_factory.mktemp("ref") / "root").root


def run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--cache-dir", str(cache))


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _reference_rows(root: Path) -> dict[str, dict[str, Any]]:
    """What ``ls --json -R /`` should say, from the reference tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if path.is_symlink() else "file"
            out["/" + str(path.relative_to(root))] = {
                "type": kind,
                "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                "size": st.st_size if kind != "dir" else 0,
                "link": os.readlink(path) if kind == "symlink" else None,
            }
    return out


def test_ls_json_recursive_is_the_merged_tree(image: str, reference: Path, tmp_path: Path) -> None:
    rows = json.loads(_ok(run("ls", "--json", "-R", image, "/", cache=tmp_path)))
    got = {r["path"]: {k: r[k] for k in ("type", "mode", "size", "link")} for r in rows}
    assert got == _reference_rows(reference)
    assert "/etc/gone" not in got and "/opt/dir/old" not in got  # whiteouts applied
    assert all(r["mtime"] == MTIME for r in rows)


def test_ls_plain_long_and_through_a_symlink(image: str, tmp_path: Path) -> None:
    assert _ok(run("ls", image, cache=tmp_path)).split() == ["etc", "lib", "opt", "src", "usr"]
    assert _ok(run("ls", image, "/lib", cache=tmp_path)).split() == ["libx.so"]
    long = _ok(run("ls", "-l", image, "/src", cache=tmp_path)).splitlines()
    by_name = {line.split()[-1]: line for line in long}
    assert by_name["run.sh"].startswith("-rwxr-xr-x ")
    assert f" {len(BIG)} " in by_name["big.bin"]
    assert by_name["weights"].startswith("drwxr-x--- ")
    links = _ok(run("ls", "-l", image, "/src/weights", cache=tmp_path))
    assert "link-abs -> /etc/hostname" in links
    assert "link-up -> ../../etc" in links
    recursive = _ok(run("ls", "-R", image, "/src/weights", cache=tmp_path)).split()
    assert "sub/extra.safetensors" in recursive and "model.safetensors" in recursive


def test_cat_streams_files_and_follows_symlinks(image: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "r8imfs",
            "cat",
            image,
            "/src/big.bin",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(BIG).digest()
    assert _ok(run("cat", image, "/lib/libx.so", cache=tmp_path)) == "lib bytes\n"
    assert _ok(run("cat", image, "src/weights/link-abs", cache=tmp_path)) == "base\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cat", "/etc/gone"), "no such file or directory in the image: /etc/gone"),
        (("cat", "/src"), "/src is a directory"),
        (("ls", "/nope/deeper"), "no such file or directory in the image: /nope/deeper"),
        (("tensors", "/src/run.sh"), "/src/run.sh: header length"),
        (("tensors", "/etc"), "no .safetensors or .gguf files under /etc"),
    ],
)
def test_errors_are_one_line(
    image: str, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    proc = run(args[0], image, *args[1:], cache=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cp_a_tree_keeps_modes_mtimes_and_symlinks(image: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    proc = run("cp", f"{image}:/src", str(dest), cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert f"to {dest}" in proc.stderr
    assert (dest / "big.bin").read_bytes() == BIG
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "weights").stat().st_mode) == 0o750
    assert int((dest / "weights").stat().st_mtime) == MTIME
    assert int((dest / "run.sh").stat().st_mtime) == MTIME
    assert os.readlink(dest / "weights/link-abs") == "/etc/hostname"
    assert os.readlink(dest / "weights/link-up") == "../../etc"
    assert (dest / "weights/link-abs").is_symlink()


def test_cp_never_writes_through_a_symlink_outside_dest(image: str, tmp_path: Path) -> None:
    """DEST already holds symlinks pointing outside it, where the image has a file
    and a directory: the file replaces the link, the directory is refused, and the
    outside targets stay untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"precious")
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "model.safetensors").symlink_to(outside / "model.safetensors")
    (dest / "sub").symlink_to(outside)
    proc = run("cp", f"{image}:/src/weights/", str(tmp_path), cache=tmp_path / "cache")
    assert proc.returncode == 1
    assert "weights/sub: exists and is not a directory" in proc.stderr
    assert (outside / "model.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == ["model.safetensors"]
    assert not (dest / "model.safetensors").is_symlink()  # replaced, not followed
    assert (dest / "model.safetensors").read_bytes() == _safetensors(1)


def test_cp_a_file_into_a_directory_and_the_root_merge(image: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _ok(run("cp", f"{image}:/etc/hostname", str(tmp_path), cache=cache))
    assert (tmp_path / "hostname").read_text() == "base\n"
    _ok(run("cp", f"{image}:/opt/dir/new", str(tmp_path / "renamed"), cache=cache))
    assert (tmp_path / "renamed").read_text() == "new\n"
    proc = run("cp", f"{image}:/missing", str(tmp_path), cache=cache)
    assert (
        proc.returncode == 1 and "no such file or directory in the image: /missing" in proc.stderr
    )


def _safe_open_view(data: bytes, path: Path) -> dict[str, Any]:
    path.write_bytes(data)
    with safe_open(str(path), framework="numpy") as f:
        tensors = {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            piece = f.get_slice(key)
            array = f.get_tensor(key)
            tensors[key] = (piece.get_dtype(), list(piece.get_shape()), array.tobytes())
        return {"metadata": f.metadata(), "tensors": tensors}


def test_tensors_match_safe_open(image: str, layers: list[bytes], tmp_path: Path) -> None:
    out = json.loads(_ok(run("tensors", "--json", image, cache=tmp_path / "cache")))
    by_path = {h["path"]: h for h in out}
    assert sorted(by_path) == [
        "/src/weights/model.safetensors",
        "/src/weights/sub/extra.safetensors",
        "/src/weights/sub/model.gguf",
    ]
    for seed, path in (
        (1, "/src/weights/model.safetensors"),
        (2, "/src/weights/sub/extra.safetensors"),
    ):
        data = _safetensors(seed)
        truth = _safe_open_view(data, tmp_path / f"{seed}.safetensors")
        got = by_path[path]
        assert got["size"] == len(data) and got["format"] == "safetensors"
        assert got["metadata"] == truth["metadata"]
        assert {t["name"] for t in got["tensors"]} == set(truth["tensors"])
        for t in got["tensors"]:
            dtype, shape, body = truth["tensors"][t["name"]]
            assert (t["dtype"], t["shape"], t["size"]) == (dtype, shape, len(body))
            assert data[t["offset"] : t["offset"] + t["size"]] == body
    text = _ok(run("tensors", image, "/src/weights/model.safetensors", cache=tmp_path / "cache"))
    assert "embed.weight" in text and "F16" in text and "[64, 32]" in text and "format: pt" in text


def test_tensors_gguf_match_gguf_reader(image: str, tmp_path: Path) -> None:
    import gguf

    out = json.loads(
        _ok(run("tensors", "--json", image, "/src/weights/sub/model.gguf", cache=tmp_path))
    )
    [got] = out
    data = _gguf(tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    want = {
        t.name: (t.tensor_type.name, [int(x) for x in t.shape], int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    }
    assert got["size"] == len(data)
    assert {
        t["name"]: (t["dtype"], t["shape"], t["offset"], t["size"]) for t in got["tensors"]
    } == want
    assert got["metadata"]["test.answer"] == 42
    assert got["metadata"]["test.note"] == "hello"
    assert got["metadata"]["test.vocab"] == {"type": "string", "length": 100}


def test_commands_work_where_dev_fuse_is_unusable(image: str, tmp_path: Path) -> None:
    """In a mount namespace with /dev/null over /dev/fuse: mount fails, the rest work."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to hide /dev/fuse in a mount namespace")
    cache, out = tmp_path / "cache", tmp_path / "out"
    (tmp_path / "mnt").mkdir()
    py = f"{sys.executable} -m r8imfs"
    script = "\n".join(
        [
            "set -u",
            "mount --bind /dev/null /dev/fuse || exit 99",
            f"timeout 60 {py} mount {image} {tmp_path}/mnt --cache-dir {cache} --foreground"
            f" > {tmp_path}/mount.log 2>&1 && echo MOUNTED",
            f"{py} ls -R {image} /src --cache-dir {cache} > {tmp_path}/ls.txt || exit 1",
            f"{py} cat {image} /etc/hostname --cache-dir {cache} > {tmp_path}/cat.txt || exit 2",
            f"{py} cp {image}:/src/weights {out} --cache-dir {cache} -q || exit 3",
            f"{py} tensors --json {image} --cache-dir {cache} > {tmp_path}/t.json || exit 4",
        ]
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "MOUNTED" not in proc.stdout, "the mount worked: /dev/fuse was not hidden"
    assert "cannot mount" in (tmp_path / "mount.log").read_text()
    assert "big.bin" in (tmp_path / "ls.txt").read_text()
    assert (tmp_path / "cat.txt").read_text() == "base\n"
    assert (out / "model.safetensors").read_bytes() == _safetensors(1)
    assert len(json.loads((tmp_path / "t.json").read_text())) == 3


BIG_MODEL_MIB = 64


@pytest.fixture(scope="module")
def big_model() -> bytes:
    rng = np.random.default_rng(3)
    half = BIG_MODEL_MIB * 1024 * 1024 // 2
    body = np.frombuffer(rng.bytes(2 * half), dtype=np.float16).reshape(2, -1, 1024)
    return save({"w0": body[0], "w1": body[1]}, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def random_access_images(registry: RegistryServer, big_model: bytes) -> dict[str, str]:
    """Repositories (no host) of one model image: uncompressed, and seekable zstd."""
    weights = make_tar(
        [
            Member("src", "d"),
            Member("src/weights", "d"),
            Member("src/weights/model.safetensors", data=big_model),
        ]
    )
    plain = "browse/model-plain:v1"
    push(
        f"{registry.host}/{plain}",
        layers=[(weights, "COPY weights", None)],
        manifest_type=mt.OCI_MANIFEST,
        compression="none",
    )
    seekable = "browse/model-zstd:v1"
    _ok(cli("-q", "zstd", f"{registry.host}/{plain}", f"{registry.host}/{seekable}"))
    return {"plain": plain, "zstd": seekable}


@pytest.mark.parametrize("kind", ["plain", "zstd"])
def test_tensors_reads_headers_only_in_random_access_layers(
    kind: str,
    random_access_images: dict[str, str],
    big_model: bytes,
    proxy: CountingProxy,
    tmp_path: Path,
) -> None:
    """Cold cache: indexing reads the tar header's block (and the layer's last
    block); the safetensors header is in the first, so ``tensors`` moves a few
    4 MiB blocks at most, not the 64 MiB file. ``r8imfs zstd`` writes
    zstd:chunked, served through its TOC: one small exact GET for the TOC, then
    the blocks holding the file's first chunk (read whole: its digest is checked
    before any byte of it is used). Warm: no blob bytes at all (the TOC's bytes
    are kept beside the index)."""
    ref = f"{proxy.host}/{random_access_images[kind]}"
    [layer] = [x["digest"] for x in json.loads(_ok(cli("layers", "--json", ref)))["layers"]]
    proxy.reset()
    out = json.loads(_ok(run("tensors", "--json", ref, cache=tmp_path)))
    cold = proxy.blob_downloads().get(layer, 0)
    assert [t["name"] for t in out[0]["tensors"]] == ["w0", "w1"]
    assert out[0]["size"] == len(big_model)
    proxy.reset()
    _ok(run("tensors", "--json", ref, cache=tmp_path))
    warm = proxy.blob_downloads().get(layer, 0)
    print(f"\ntensors, {kind} layer, {BIG_MODEL_MIB} MiB file: cold {cold} B, warm {warm} B")
    # the header's block and the layer's last; under load, one readahead block of the
    # indexing pass can start before tensors turns readahead off (seen in CI-like runs);
    # a zstd:chunked layer also reads its TOC (one small exact GET)
    assert 0 < cold <= 3 * DEFAULT_BLOCK_SIZE + (64 * 1024 if kind == "zstd" else 0)
    assert warm == 0


def test_cp_draws_progress_on_a_terminal(image: str, tmp_path: Path) -> None:
    """Under a pseudo-terminal (script(1)): the indexing and copy bars are drawn,
    from indexing threads and the copy alike, and the copy is whole."""
    if shutil.which("script") is None:
        pytest.skip("script(1) (util-linux) is needed for a pseudo-terminal")
    cmd = f"{sys.executable} -m r8imfs cp {image}:/src {tmp_path}/out --cache-dir {tmp_path}/cache"
    proc = subprocess.run(
        ["script", "-qec", cmd, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert "indexing layer 2/2" in proc.stdout
    assert "copying /src" in proc.stdout and "done:" in proc.stdout
    assert (tmp_path / "out/big.bin").read_bytes() == BIG
