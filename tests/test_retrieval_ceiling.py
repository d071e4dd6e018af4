"""`benchmarks/retrieval_ceiling.py`: every shapes caption is true of its own image, one image
alone is always found, and more images lower the ceiling."""

from __future__ import annotations

from .conftest import load_benchmark


def test_ceiling_is_one_image_alone_and_falls_with_more_images() -> None:
    ceiling = load_benchmark("retrieval_ceiling").ceiling
    assert ceiling(0, "val", 1)["t2i_r1_ceiling"] == 100.0
    many = ceiling(0, "val", 120)  # raises if a caption is read as false of its own image
    assert 0 < many["t2i_r1_ceiling"] < 100 and many["captions"] == 600
    # "a circle." fits far more images than a full description with sizes and colours
    assert many["per_kind"]["shapes_only"] < many["per_kind"]["full"]
