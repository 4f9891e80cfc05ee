"""medlens.data.volumes: NIfTI volumes -> per-slice PNGs, aligned masks and a manifest.

Synthetic volumes (nibabel, a few voxels wide) pin the contract: one row per slice, the io
module's slicing, masks aligned pixel for pixel, labels from the caller's rule, the subject id
as patient id, one intensity scale per volume, and clear errors for grids that do not match.
One test reads a real subject from ../shared/data/sij_mri when that folder exists.
"""

from __future__ import annotations

import collections
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.io import read_image, read_mask
from medlens.data.manifest import from_csv
from medlens.data.splits import make_splits
from medlens.data.volumes import (
    MaskRule,
    SliceInfo,
    export_slices,
    subject_id,
    volumes_to_slices,
)
from medlens.errors import DataError

nib = pytest.importorskip("nibabel")

SIJ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sij_mri"

X, Y, Z = 12, 10, 5  # voxel order: the exported PNGs are Y x X (volume[:, :, k].T)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((X, Y, Z)) * 1000).astype(np.float32)


def lesion(slices: tuple[int, ...] = (1, 3)) -> np.ndarray:
    m = np.zeros((X, Y, Z), dtype=np.uint8)
    for k in slices:
        m[2 : 2 + k + 1, 5:8, k] = 1  # asymmetric in x and y, so a missing transpose shows
    return m


def rows_of(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture
def subject(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    region = np.zeros((X, Y, Z), dtype=np.uint8)
    region[1:10, 1:9, :] = 1
    return {
        "image": write_nifti(src / "S01_STIR.nii.gz", volume()),
        "lesion": write_nifti(src / "S01_lesion_R1.nii.gz", lesion()),
        "region": write_nifti(src / "S01_region.nii.gz", region),
    }


def test_export_rows_masks_labels_and_patient_ids(subject: dict[str, Path], tmp_path: Path):
    out = tmp_path / "out"
    manifest = export_slices(
        [subject["image"]],
        out,
        {"lesion": [subject["lesion"]], "region": [subject["region"]]},
        label_from="lesion",
        percentiles=(0.5, 99.5),  # io.read_image's window, to compare with it below
    )
    assert manifest == out / "manifest.csv"
    rows = rows_of(manifest)
    with manifest.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert header == [
        "path",
        "label",
        "patient_id",
        "lesion_mask",
        "region_mask",
        "lesion_fraction",
        "region_fraction",
        "slice_index",
    ]
    assert len(rows) == Z
    assert [r["slice_index"] for r in rows] == [str(k) for k in range(Z)]
    assert {r["patient_id"] for r in rows} == {"S01"}
    assert [r["label"] for r in rows] == ["none", "inflamed", "none", "inflamed", "none"]

    vol_mask = lesion()
    for k, r in enumerate(rows):
        img = png(out / r["path"])
        assert img.shape == (Y, X) and img.dtype == np.uint8
        # The same pixels io gives for that slice (same slicing, same volume-wide window).
        ref = read_image(subject["image"], slice_index=k).array
        assert np.abs(img.astype(np.float64) - ref * 255).max() <= 1.0
        m = png(out / r["lesion_mask"])
        assert m.shape == (Y, X) and set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(m > 0, vol_mask[:, :, k].T > 0)
        np.testing.assert_array_equal(m > 0, read_mask(subject["lesion"], slice_index=k))
        assert float(r["lesion_fraction"]) == pytest.approx(vol_mask[:, :, k].mean(), rel=1e-5)
        assert float(r["region_fraction"]) == pytest.approx(72 / 120, rel=1e-5)
        assert not any(k in Image.open(out / r["path"]).info for k in ("Comment", "Description"))

    info = json.loads((out / "export.json").read_text())
    assert info["n_slices"] == Z and info["label_counts"] == {"none": 3, "inflamed": 2}
    assert set(info["subjects"]) == {"S01"}
    assert "src" not in json.dumps(info)  # no source paths leave the exporter

    # medlens reads it back: region masks as a path column, all slices of S01 one patient.
    m = from_csv(
        manifest,
        ["none", "inflamed"],
        mask_column="lesion_mask",
        extra_columns=["region_mask"],
        path_columns=["region_mask"],
    )
    assert len(m) == Z and {s.patient_id for s in m.samples} == {"S01"}
    assert all(Path(s.get("region_mask") or "").is_file() for s in m.samples)


def test_one_intensity_scale_per_volume(tmp_path: Path):
    data = np.zeros((X, Y, Z), dtype=np.float32)
    data[:, :, 0] = 10.0  # a dim slice must stay dim, not be stretched to white
    data[:, :, 1:] = np.linspace(0, 1000, X * Y * (Z - 1)).reshape(X, Y, Z - 1)
    src = write_nifti(tmp_path / "A1_T2.nii", data)
    manifest = export_slices([src], tmp_path / "out", percentiles=(0.0, 100.0))
    rows = rows_of(manifest)
    assert {r["label"] for r in rows} == {"unlabelled"}
    dim = png(tmp_path / "out" / rows[0]["path"])
    bright = png(tmp_path / "out" / rows[-1]["path"])
    assert dim.max() <= 3 and bright.max() == 255


def test_several_subjects_readers_combined_and_split_by_subject(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    images, readers = [], []
    for i, sid in enumerate(["P1", "P2", "P3", "P4", "P5", "P6"]):
        images.append(write_nifti(src / f"{sid}_img.nii.gz", volume(i)))
        for r, slices in enumerate([(1, 2), (2,), (2, 3)]):  # slice 2 by all, 1 and 3 by one
            readers.append(write_nifti(src / f"{sid}_les_R{r}.nii.gz", lesion(slices)))
    with pytest.raises(DataError, match="combine"):
        export_slices(images, tmp_path / "x", {"les": readers}, label_from="les")
    labels = {}
    for rule in ("union", "majority", "intersection"):
        out = tmp_path / rule
        rows = rows_of(
            export_slices(images, out, {"les": readers}, label_from="les", combine={"les": rule})
        )
        assert len(rows) == 6 * Z
        labels[rule] = [r["label"] for r in rows if r["patient_id"] == "P1"]
    assert labels["union"] == ["none", "inflamed", "inflamed", "inflamed", "none"]
    assert labels["majority"] == ["none", "none", "inflamed", "none", "none"]
    assert labels["intersection"] == labels["majority"]

    m = from_csv(tmp_path / "union" / "manifest.csv", ["none", "inflamed"])
    splits = make_splits(m, val=0.2, test=0.2, seed=0)
    where: dict[str, set[str]] = {}
    for s in m.samples:
        where.setdefault(s.patient_id or "", set()).add(splits.assignment[m.key(s)])
    assert all(len(v) == 1 for v in where.values())  # a subject's slices never straddle splits
    assert set().union(*where.values()) == {"train", "val", "test"}


def test_custom_rule_min_pixels_and_16_bit(subject: dict[str, Path], tmp_path: Path):
    def by_slice(info: SliceInfo) -> str:
        return "upper" if info.index >= 3 else "lower"

    rows = rows_of(export_slices([subject["image"]], tmp_path / "a", label_from=by_slice))
    assert [r["label"] for r in rows] == ["lower"] * 3 + ["upper"] * 2

    # slice 1 has 2x3 = 6 lesion pixels, slice 3 has 4x3 = 12
    rule = MaskRule("lesion", positive="yes", negative="no", min_pixels=10)
    out = tmp_path / "b"
    rows = rows_of(
        export_slices(
            [subject["image"]], out, {"lesion": [subject["lesion"]]}, label_from=rule, bit_depth=16
        )
    )
    assert [r["label"] for r in rows] == ["no", "no", "no", "yes", "no"]
    img = Image.open(out / rows[0]["path"])
    assert img.mode.startswith("I") and np.asarray(img).max() > 255


def test_bad_inputs_are_clear_errors(subject: dict[str, Path], tmp_path: Path):
    img = subject["image"]
    small = write_nifti(tmp_path / "S01_small.nii.gz", np.zeros((X, Y, Z - 1), np.uint8))
    shifted = write_nifti(tmp_path / "S01_shift.nii.gz", lesion(), np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(DataError, match="shape"):
        export_slices([img], tmp_path / "o1", {"m": [small]})
    with pytest.raises(DataError, match="affine"):
        export_slices([img], tmp_path / "o2", {"m": [shifted]})
    with pytest.raises(DataError, match="several volumes"):
        export_slices([img, subject["lesion"]], tmp_path / "o3")
    other = write_nifti(tmp_path / "S02_STIR.nii.gz", volume(1))
    with pytest.raises(DataError, match="no file for subject"):
        export_slices([img, other], tmp_path / "o4", {"lesion": [subject["lesion"]]})
    with pytest.raises(DataError, match="no file for subject"):  # the label set may never miss
        export_slices(
            [img, other],
            tmp_path / "o5",
            {"lesion": [subject["lesion"]]},
            label_from="lesion",
            allow_missing_masks=True,
        )
    rows = rows_of(
        export_slices(
            [img, other], tmp_path / "o6", {"lesion": [subject["lesion"]]}, allow_missing_masks=True
        )
    )
    assert {r["lesion_mask"] for r in rows if r["patient_id"] == "S02"} == {""}
    with pytest.raises(DataError, match="exists"):
        export_slices([img], tmp_path / "o6")
    export_slices([img], tmp_path / "o6", overwrite=True)
    fake = tmp_path / "S03_STIR.nii.gz"
    Image.new("L", (4, 4)).save(fake, format="PNG")  # a PNG named like NIfTI: content decides
    with pytest.raises(DataError, match="NIfTI"):
        export_slices([fake], tmp_path / "o7")
    with pytest.raises(DataError, match="not a mask set"):
        export_slices([img], tmp_path / "o8", {"lesion": [subject["lesion"]]}, label_from="x")
    with pytest.raises(DataError, match="safe token"):
        subject_id("/d/a b.nii", r"^(.*)\.nii")
    assert subject_id("/a/1007_inflammation_R11.nii.gz") == "1007"


def test_volumes_to_slices_takes_files_or_folders(subject: dict[str, Path], tmp_path: Path):
    out = tmp_path / "api"
    done = volumes_to_slices(
        subject["image"],
        out,
        {"lesion": subject["lesion"], "region": [subject["region"]]},
        label_from="lesion",
    )
    assert done.manifest == (out / "manifest.csv").resolve() and done.export_json.is_file()
    assert done.n_slices == Z and done.subjects == ["S01"]
    rows = rows_of(done.manifest)
    assert len(rows) == Z
    assert done.label_counts == dict(collections.Counter(r["label"] for r in rows))
    assert "5 slices of 1 subjects" in done.summary()
    assert "argparse" not in sys.modules["medlens.data.volumes"].__dict__
    # A folder gives every volume in it: three files of subject S01 here, which is refused.
    with pytest.raises(DataError, match="several volumes"):
        volumes_to_slices(subject["image"].parent, tmp_path / "folder")
    with pytest.raises(DataError, match="exists"):
        volumes_to_slices([subject["image"]], out)


@pytest.mark.realdata
def test_real_sij_subject(tmp_path: Path):
    if not SIJ.is_dir():
        pytest.skip(f"real-data folder {SIJ} is absent (it is never copied into the project)")
    images = sorted((SIJ / "images").glob("*_STIR.nii.gz"))
    if not images:
        pytest.skip(f"no *_STIR.nii.gz volumes in {SIJ / 'images'}")
    image = images[0]
    sid = subject_id(image)
    reader = SIJ / "inflammation" / "R11" / f"{sid}_inflammation_R11.nii.gz"
    region = SIJ / "disease_region" / f"{sid}_disease_region.nii.gz"
    out = tmp_path / "sij"
    manifest = export_slices(
        [image],
        out,
        {"inflammation": [reader], "disease_region": [region]},
        label_from="inflammation",
    )
    rows = rows_of(manifest)
    truth = np.asarray(nib.load(str(reader)).dataobj) != 0
    assert len(rows) == truth.shape[2]
    assert {r["patient_id"] for r in rows} == {sid}
    positive = truth.any(axis=(0, 1))
    assert [r["label"] == "inflamed" for r in rows] == positive.tolist()
    k = int(np.argmax(truth.sum(axis=(0, 1))))  # the most inflamed slice
    img = png(out / rows[k]["path"])
    mask = png(out / rows[k]["inflammation_mask"]) > 0
    assert img.shape == mask.shape == (truth.shape[1], truth.shape[0])
    np.testing.assert_array_equal(mask, read_mask(reader, slice_index=k))
    assert png(out / rows[k]["disease_region_mask"]).any()
    # STIR shows oedema bright: the aligned mask sits on brighter than average tissue.
    assert img[mask].mean() > img.mean()
