"""`scl prepare` on bad input, through the real entry point: one line on stderr and exit code 2,
never a traceback; a run that writes no sample fails with its skip summary and likely cause."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scl_cli.data.pipeline import nothing_written

from .realdata import make_coco, write_json


def scl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `scl ARGS` through `main()` in this process: (exit code, stdout, stderr)."""
    from scl_cli.cli import main

    argv, sys.argv = sys.argv, ["scl", *args]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco-download")).parent.parent


def test_out_is_a_file(tmp_path: Path, karpathy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "data.txt"
    file.write_text("not a folder")
    for name, extra in (("coco", ["--source", str(karpathy)]), ("shapes", ["--images", "10"])):
        code, _, err = scl(capsys, "prepare", name, *extra, "--out", str(file), "--workers", "1", "--plain")
        assert code == 2
        assert one_error_line(err).startswith(f"error: {file}: is a file, not a folder (--out)")
    # A file above --out is named too; nothing was created.
    code, _, err = scl(
        capsys, "prepare", "coco", "--source", str(karpathy), "--out", str(file / "sub"), "--plain"
    )
    assert code == 2 and one_error_line(err).startswith(
        f"error: {file}: is a file, not a folder (a parent of"
    )
    assert file.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]


def test_karpathy_json_without_image_folders_fails(
    tmp_path: Path, karpathy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "only-json"
    (source / "karpathy").mkdir(parents=True)
    (source / "karpathy" / "dataset_coco.json").write_bytes(
        (karpathy / "karpathy" / "dataset_coco.json").read_bytes()
    )
    out = tmp_path / "data"
    code, stdout, err = scl(capsys, "prepare", "coco", "--source", str(source), "--out", str(out), "--workers", "1",
                            "--plain")  # fmt: skip
    assert code == 2
    # The skip summary is printed as for any run ...
    assert "skipped sample: missing_image" in stdout and "written" in stdout
    # ... and one line says what happened and why.
    line = one_error_line(err)
    assert line.startswith(
        f"error: {out / 'coco'}: wrote no sample: 0 of 14 inputs written (skipped: 14 missing_image)"
    )
    assert "likely cause: no image file was found: the image folders are not among --source" in line
    assert str(out / "coco" / "skipped.jsonl") in line
    skipped = [json.loads(s) for s in (out / "coco" / "skipped.jsonl").read_text().splitlines()]
    assert sum(s["reason"] == "missing_image" for s in skipped) == 14
    # With the images it works (exit 0) and writes into the same folder.
    code, _, err = scl(capsys, "prepare", "coco", "--source", str(karpathy), "--out", str(out), "--workers", "1",
                       "--image-size", "32", "--plain")  # fmt: skip
    assert code == 0, err


def test_annotations_without_inputs_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_json(tmp_path / "src" / "karpathy" / "dataset_coco.json", {"images": [], "dataset": "coco"})
    out = tmp_path / "data"
    code, _, err = scl(
        capsys, "prepare", "coco", "--source", str(tmp_path / "src"), "--out", str(out), "--plain"
    )
    assert code == 2
    assert "wrote no sample: the annotation files list no input" in one_error_line(err)


def test_likely_causes() -> None:
    root = Path("data/x")
    assert "the image folders are not among --source" in nothing_written(root, 3, {"missing_image": 3})
    assert "downloaded" in nothing_written(root, 5, {"http_404": 3, "timeout": 2})
    assert "decoded" in nothing_written(root, 5, {"truncated_image": 4, "http_404": 1})
    assert "video folder" in nothing_written(root, 2, {"missing_video": 2})
    assert "(skipped: 4 truncated_image, 1 http_404)" in nothing_written(
        root, 5, {"http_404": 1, "truncated_image": 4}
    )
