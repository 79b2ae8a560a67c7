"""Each layout built end to end from a tiny archive of the real data set's shape, served by real servers."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lofiseg.config import DatasetSpec, DownloadParams
from lofiseg.data.format import Dataset, DatasetWriter, Sample, read_mask
from lofiseg.data.layouts import LayoutError, build_dataset, carve_val, iter_layout
from lofiseg.data.masks import voc_colormap
from tests import servers
from tests.real_stand_ins import bsds_mat
from tests.servers import FileServer, put_s3_object

# the servers' fixtures, used by name in the tests below
http_server = servers.http_server
moto_server = servers.moto_server
s3_endpoint = servers.s3_endpoint

RNG = np.random.default_rng(0)


# --- tiny files of the real formats -----------------------------------------------------------------------

def jpg(h: int = 20, w: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def jpg_grey(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png(arr: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """A mode L PNG, or with ``palette`` a mode P PNG whose indices are ``arr`` (like VOC's)."""
    if palette is None:
        im = Image.fromarray(arr)
    else:
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes())
        im.putpalette(palette.reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def saliency_mask(h: int = 20, w: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A 0/255 mask with anti-aliased edge values, and its expected 0/1 labels (>= 128 is object)."""
    raw = np.zeros((h, w), dtype=np.uint8)
    raw[5:15, 6:18] = 255
    raw[5, 6:18] = 127  # below the threshold -> background
    raw[14, 6:18] = 128  # at the threshold -> object
    expected = (raw >= 128).astype(np.uint8)
    return raw, expected


OPTIONS = DownloadParams(retries=2, backoff_seconds=0.0, timeout_seconds=5.0,
                         datasets={"x": {"source": "synthetic", "generator": "saliency"}})


def spec(**fields: object) -> DatasetSpec:
    return DatasetSpec.model_validate(fields)


# --- sod --------------------------------------------------------------------------------------------------

def test_sod_ecssd_shape_from_two_zips_over_http(http_server: FileServer, tmp_path: Path) -> None:
    images = {f"images/000{i}.jpg": jpg() for i in (1, 2, 3)}
    masks, expected = {}, {}
    for i in (1, 2, 3):
        raw, labels = saliency_mask()
        masks[f"ground_truth_mask/000{i}.png"] = png(raw)
        expected[f"000{i}"] = labels
    urls = [http_server.add(zip_bytes(images), "images.zip"), http_server.add(zip_bytes(masks), "ground_truth_mask.zip")]
    ecssd = spec(source="http", files=[{"uri": u} for u in urls], layout="sod", images="images/*.jpg",
                 masks="ground_truth_mask/{stem}.png", split="test")
    out = build_dataset("ecssd", ecssd, tmp_path / "raw" / "ecssd", tmp_path / "cache", OPTIONS, progress=False)
    ds = Dataset(out)
    ds.validate(max_label=1, require_masks=True)
    assert [r.id for r in ds] == ["0001", "0002", "0003"]
    assert {r.split for r in ds} == {"test"} and {r.source for r in ds} == {"ecssd"}
    for record in ds:
        assert np.array_equal(ds.mask(record), expected[record.id])
        assert (out / record.image).read_bytes() == images[f"images/{record.id}.jpg"]  # kept byte for byte
    # a second build reuses the cached archives and tree: no new request
    build_dataset("ecssd", ecssd, tmp_path / "raw" / "ecssd", tmp_path / "cache", OPTIONS, progress=False)
    assert [http_server.requests_for(u) for u in urls] == [1, 1]


def test_sod_duts_shape_from_s3_with_val_fraction(s3_endpoint: str, tmp_path: Path) -> None:
    ids = [f"ILSVRC2012_test_0000{i}" for i in range(4)]
    files = {}
    for i in ids:
        files[f"DUTS-TR/DUTS-TR-Image/{i}.jpg"] = jpg(16, 16)
        files[f"DUTS-TR/DUTS-TR-Mask/{i}.png"] = png(saliency_mask(16, 16)[0])
    # the real DUTS-TR has one mask saved as JPEG (n04442312_17818.jpg): the pattern {stem}.* finds it
    files["DUTS-TR/DUTS-TR-Mask/ILSVRC2012_test_00003.jpg"] = jpg_grey(saliency_mask(16, 16)[0])
    del files["DUTS-TR/DUTS-TR-Mask/ILSVRC2012_test_00003.png"]
    uri = put_s3_object(s3_endpoint, "sod-sets", "DUTS-TR.zip", zip_bytes(files))
    duts = spec(source="s3", files=[{"uri": uri}], layout="sod", images="DUTS-TR/DUTS-TR-Image/*.jpg",
                masks="DUTS-TR/DUTS-TR-Mask/{stem}.*", split="train", val_fraction=0.5)
    ds = Dataset(build_dataset("duts_tr", duts, tmp_path / "out", tmp_path / "cache", OPTIONS, progress=False))
    ds.validate(max_label=1, require_masks=True)
    expected = saliency_mask(16, 16)[1]
    assert np.array_equal(ds.mask("ILSVRC2012_test_00001"), expected)
    # JPEG compression moves the 127/128 edge rows (5 and 14) across the threshold: compare the other rows
    jpeg_mask = ds.mask("ILSVRC2012_test_00003")
    assert np.array_equal(np.delete(jpeg_mask, [5, 14], axis=0), np.delete(expected, [5, 14], axis=0))
    val = carve_val(ids, 0.5)
    assert len(val) == 2  # floor(0.5 * 4 + 0.5) = 2
    assert {r.id for r in ds.split("val")} == val
    assert {r.id for r in ds.split("train")} == set(ids) - val


def test_sod_split_files_keep_listed_ids(tmp_path: Path) -> None:
    tree = tmp_path / "MSRA-B"
    tree.mkdir()
    for i in ("0_1", "0_2", "0_3"):
        (tree / f"{i}.jpg").write_bytes(jpg())
        (tree / f"{i}.png").write_bytes(png(saliency_mask()[0]))
    (tree / "train.txt").write_text("0_1.jpg\n0_2.jpg\n")
    (tree / "test.txt").write_text("# comment\n0_3.jpg\n")
    msra = spec(source="local", files=[{"uri": str(tree)}], layout="sod", images="*.jpg", masks="{stem}.png",
                split_files={"train": "train.txt", "test": "test.txt"})
    items = list(iter_layout(tree, msra))
    assert [(i.id, i.split) for i in items] == [("0_1", "train"), ("0_2", "train"), ("0_3", "test")]
    (tree / "test.txt").write_text("0_3\n0_9\n")
    with pytest.raises(LayoutError, match=r"listed in split_files have no image .*\['0_9'\]"):
        list(iter_layout(tree, msra))
    (tree / "test.txt").write_text("0_1\n")
    with pytest.raises(LayoutError, match="'0_1' is listed in both .*train.txt and .*test.txt"):
        list(iter_layout(tree, msra))


# --- voc --------------------------------------------------------------------------------------------------

def test_voc_shape_from_tar(http_server: FileServer, tmp_path: Path) -> None:
    root = "VOCdevkit/VOC2012"
    labels = {
        "2007_000032": np.array([[0, 0, 1, 1], [0, 255, 1, 1], [15, 15, 255, 0]], dtype=np.uint8),
        "2007_000033": np.array([[20, 20, 0, 0], [255, 255, 0, 0], [0, 0, 0, 0]], dtype=np.uint8),
        "2007_000039": np.array([[0, 5, 5, 0], [0, 5, 5, 0], [0, 0, 0, 0]], dtype=np.uint8),
    }
    files = {f"{root}/JPEGImages/{i}.jpg": jpg(3, 4) for i in labels}
    files[f"{root}/JPEGImages/2008_000001.jpg"] = jpg(3, 4)  # detection-only image: in no segmentation list
    files.update({f"{root}/SegmentationClass/{i}.png": png(m, voc_colormap()) for i, m in labels.items()})
    files[f"{root}/ImageSets/Segmentation/train.txt"] = b"2007_000032\n2007_000039\n"
    files[f"{root}/ImageSets/Segmentation/val.txt"] = b"2007_000033\n"
    files[f"{root}/ImageSets/Segmentation/trainval.txt"] = b"2007_000032\n2007_000033\n2007_000039\n"
    url = http_server.add(tar_bytes(files, "w"), "VOCtrainval_11-May-2012.tar")
    voc = spec(source="http", files=[{"uri": url}], layout="voc")
    ds = Dataset(build_dataset("voc2012", voc, tmp_path / "voc", tmp_path / "cache", OPTIONS, progress=False))
    ds.validate(max_label=20, require_masks=True)
    assert {r.id: r.split for r in ds} == {"2007_000032": "train", "2007_000033": "val", "2007_000039": "train"}
    for sample_id, expected in labels.items():  # palette indices kept, 255 borders stay ignore
        assert np.array_equal(ds.mask(sample_id), expected)


def test_voc_unexpected_index_names_both_files(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass"):
        (root / sub).mkdir(parents=True)
    (root / "JPEGImages" / "a.jpg").write_bytes(jpg(3, 4))
    (root / "SegmentationClass" / "a.png").write_bytes(png(np.full((3, 4), 30, np.uint8), voc_colormap()))
    with pytest.raises(LayoutError, match=r"mask .*a\.png of image .*a\.jpg: unexpected VOC palette mask values \[30\]"):
        list(iter_layout(tmp_path, spec(source="local", files=[{"uri": str(tmp_path)}], layout="voc")))


# --- pet --------------------------------------------------------------------------------------------------

def test_pet_shape_from_two_tar_gz(http_server: FileServer, tmp_path: Path) -> None:
    trimaps = {
        "Abyssinian_1": np.array([[2, 2, 2], [2, 1, 3], [2, 3, 1]], dtype=np.uint8),
        "Abyssinian_2": np.array([[1, 1, 3], [3, 2, 2], [2, 2, 2]], dtype=np.uint8),
        "beagle_1": np.array([[2, 3, 1], [2, 3, 1], [2, 2, 2]], dtype=np.uint8),
    }
    images = {f"images/{i}.jpg": jpg(3, 3) for i in trimaps}
    images["images/Abyssinian_1.mat"] = b"stray matlab file, as in the real archive"
    annotations = {f"annotations/trimaps/{i}.png": png(t) for i, t in trimaps.items()}
    annotations["annotations/trimaps/._Abyssinian_1.png"] = b"AppleDouble debris"
    annotations["annotations/trainval.txt"] = b"Abyssinian_1 1 1 1\nbeagle_1 13 2 1\n"
    annotations["annotations/test.txt"] = b"Abyssinian_2 1 1 1\n"
    annotations["annotations/list.txt"] = b"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\n"
    urls = [http_server.add(tar_bytes(images), "images.tar.gz"), http_server.add(tar_bytes(annotations), "annotations.tar.gz")]
    pet = spec(source="http", files=[{"uri": u} for u in urls], layout="pet")
    ds = Dataset(build_dataset("pet", pet, tmp_path / "pet", tmp_path / "cache", OPTIONS, progress=False))
    ds.validate(max_label=1, require_masks=True)
    assert {r.id: r.split for r in ds} == {"Abyssinian_1": "train", "Abyssinian_2": "test", "beagle_1": "train"}
    # 1 pet -> 1, 2 background -> 0, 3 border -> 255
    assert ds.mask("Abyssinian_1").tolist() == [[0, 0, 0], [0, 1, 255], [0, 255, 1]]
    assert ds.mask("beagle_1").tolist() == [[0, 255, 1], [0, 255, 1], [0, 0, 0]]


def test_pet_missing_trimap_names_image_and_expected_mask(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "trimaps").mkdir(parents=True)
    (tmp_path / "images" / "cat_1.jpg").write_bytes(jpg(3, 3))
    with pytest.raises(LayoutError, match=r"image .*cat_1\.jpg has no mask: expected .*trimaps/cat_1\.png"):
        list(iter_layout(tmp_path, spec(source="local", files=[{"uri": str(tmp_path)}], layout="pet")))


# --- bsds -------------------------------------------------------------------------------------------------

def test_bsds_shape_from_tgz_with_alternative_masks(http_server: FileServer, tmp_path: Path) -> None:
    data = "BSR/BSDS500/data"
    segs = {
        ("train", "100075"): [np.array([[1, 1, 2], [1, 2, 2]]), np.array([[1, 2, 3], [4, 5, 6]])],
        ("val", "3096"): [np.array([[1, 1, 1], [2, 2, 2]])],
        ("test", "100007"): [np.array([[4, 4, 9], [4, 9, 9]]), np.array([[1, 1, 1], [1, 1, 1]]),
                             np.array([[1, 2, 1], [2, 1, 2]])],
    }
    files = {}
    for (split, i), seg in segs.items():
        files[f"{data}/images/{split}/{i}.jpg"] = jpg(2, 3)
        files[f"{data}/groundTruth/{split}/{i}.mat"] = bsds_mat(seg)
    files[f"{data}/images/train/Thumbs.db"] = b"windows thumbnail cache"
    # the real archive also has benchmark demo files in BSR/bench/data/{images,groundTruth}, without splits
    files["BSR/bench/data/images/2018.jpg"] = jpg(2, 3)
    files["BSR/bench/data/groundTruth/2018.mat"] = bsds_mat([np.ones((2, 3))])
    url = http_server.add(tar_bytes(files), "BSR_bsds500.tgz")
    bsds = spec(source="http", files=[{"uri": url}], layout="bsds")
    ds = Dataset(build_dataset("bsds500", bsds, tmp_path / "bsds", tmp_path / "cache", OPTIONS, progress=False))
    ds.validate(require_masks=True)
    assert {r.id: r.split for r in ds} == {"100075": "train", "3096": "val", "100007": "test"}
    assert ds.extra_fields == ("alt_masks",)
    assert ds["3096"].extra["alt_masks"] == ""
    assert ds["100007"].extra["alt_masks"] == "masks/alt/100007_1.png;masks/alt/100007_2.png"
    # first human segmentation is the mask; ids 4, 9 relabelled compactly to 1, 2
    assert ds.mask("100007").tolist() == [[1, 1, 2], [1, 2, 2]]
    assert read_mask(ds.root / "masks/alt/100007_1.png").tolist() == [[1, 1, 1], [1, 1, 1]]
    assert read_mask(ds.root / "masks/alt/100007_2.png").tolist() == [[1, 2, 1], [2, 1, 2]]
    assert read_mask(ds.root / "masks/alt/100075_1.png").tolist() == [[1, 2, 3], [4, 5, 6]]


def test_bsds_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "images" / "train").mkdir(parents=True)
    (data / "groundTruth" / "train").mkdir(parents=True)
    (data / "images" / "train" / "1.jpg").write_bytes(jpg(2, 3))
    (data / "groundTruth" / "train" / "1.mat").write_bytes(bsds_mat([np.ones((3, 3))]))
    with pytest.raises(LayoutError, match=r"mask .*1\.mat is 3x3 but image .*1\.jpg is 3x2"):
        list(iter_layout(tmp_path, spec(source="local", files=[{"uri": str(tmp_path)}], layout="bsds")))


# --- lofiseg ----------------------------------------------------------------------------------------------

def test_lofiseg_copy_keeps_tags_extra_columns_and_side_files(tmp_path: Path) -> None:
    source = tmp_path / "made" / "set"
    image = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with DatasetWriter(source, extra_fields=("note",)) as writer:
        writer.add(Sample("a", image, np.eye(8, dtype=np.uint8), split="train", tags=("sun",), extra={"note": "n1"}))
        writer.add(Sample("b", image, None, split="test", tags=("leaf",)))
        writer.add_file("docs/readme.txt", b"about")
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in source.rglob("*"):
            if path.is_file():
                zf.write(path, f"set/{path.relative_to(source).as_posix()}")
    copy = spec(source="local", files=[{"uri": str(archive)}], layout="lofiseg")
    ds = Dataset(build_dataset("copy", copy, tmp_path / "copy", tmp_path / "cache", OPTIONS, progress=False))
    ds.validate()
    original = Dataset(source)
    assert [(r.id, r.split, r.tags, r.extra) for r in ds] == [(r.id, r.split, r.tags, r.extra) for r in original]
    assert np.array_equal(ds.mask("a"), np.eye(8, dtype=np.uint8)) and not ds["b"].has_mask
    assert (ds.root / "docs" / "readme.txt").read_bytes() == b"about"


# --- errors and atomicity ---------------------------------------------------------------------------------

def test_image_without_mask_fails_and_leaves_previous_data_set(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "im").mkdir(parents=True)
    (tree / "gt").mkdir()
    for i in ("a", "b"):
        (tree / "im" / f"{i}.jpg").write_bytes(jpg())
    (tree / "gt" / "a.png").write_bytes(png(saliency_mask()[0]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    sod = spec(source="local", files=[{"uri": str(tree)}], layout="sod", images="im/*.jpg", masks="gt/{stem}.png")
    with pytest.raises(LayoutError, match=r"image .*im/b\.jpg has no mask: expected .*gt/b\.png"):
        build_dataset("s", sod, out, tmp_path / "cache", OPTIONS, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpg(20, 24))
    (tmp_path / "a.png").write_bytes(png(saliency_mask(16, 24)[0]))
    sod = spec(source="local", files=[{"uri": str(tmp_path)}], layout="sod", images="*.jpg", masks="{stem}.png")
    with pytest.raises(LayoutError, match=r"mask .*a\.png is 24x16 but image .*a\.jpg is 24x20"):
        list(iter_layout(tmp_path, sod))


def test_failed_download_leaves_no_data_set(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(zip_bytes({"images/1.jpg": jpg()}))
    http_server.cut(url, 10)
    sod = spec(source="http", files=[{"uri": url}], layout="sod", images="images/*.jpg", masks="gt/{stem}.png")
    with pytest.raises(ValueError, match="transfer failed after 3 attempt"):
        build_dataset("s", sod, tmp_path / "out", tmp_path / "cache", OPTIONS, progress=False)
    assert not (tmp_path / "out").exists()


def test_sod_masks_already_0_1_are_kept(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpg())
    labels = saliency_mask()[1]
    (tmp_path / "a.png").write_bytes(png(labels))  # stored as 0/1, not 0/255
    sod = spec(source="local", files=[{"uri": str(tmp_path)}], layout="sod", images="*.jpg", masks="{stem}.png")
    (item,) = iter_layout(tmp_path, sod)
    assert np.array_equal(item.mask, labels)


def test_sod_mask_wildcard_must_match_one_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpg())
    (tmp_path / "a.png").write_bytes(png(saliency_mask()[0]))
    (tmp_path / "a.bmp").write_bytes(b"another candidate")
    sod = spec(source="local", files=[{"uri": str(tmp_path)}], layout="sod", images="*.jpg", masks="{stem}.[pb]*")
    with pytest.raises(LayoutError, match=r"image .*a\.jpg has 2 candidate masks"):
        list(iter_layout(tmp_path, sod))


@pytest.mark.parametrize(("fields", "pattern"), [
    ({"layout": "sod", "images": "*.jpg"}, "layout 'sod' needs 'images'"),
    ({"layout": "sod", "images": "*.jpg", "masks": "gt/mask.png"}, r"must contain '\{stem\}'"),
    ({"layout": "sod", "images": "../*.jpg", "masks": "{stem}.png"}, "without '..'"),
    ({"layout": "sod", "images": "none/*.jpg", "masks": "{stem}.png"}, "no file matches the images glob"),
    ({"layout": "voc"}, r"no folder with \['JPEGImages', 'SegmentationClass'\] found"),
])
def test_spec_problems_are_clear(tmp_path: Path, fields: dict, pattern: str) -> None:
    (tmp_path / "a.jpg").write_bytes(jpg())
    with pytest.raises(LayoutError, match=pattern):
        list(iter_layout(tmp_path, spec(source="local", files=[{"uri": str(tmp_path)}], **fields)))


def test_build_rejects_synthetic_and_mismatched_uris(tmp_path: Path) -> None:
    synthetic = spec(source="synthetic", generator="saliency")
    with pytest.raises(ValueError, match="source 'synthetic' is generated by the download stage"):
        build_dataset("s", synthetic, tmp_path / "o", tmp_path / "c", OPTIONS)
    with pytest.raises(ValueError, match="source 'local': uri 'https://example.org/a.zip' must be a path"):
        spec(source="local", files=[{"uri": "https://example.org/a.zip"}], layout="sod")
    with pytest.raises(ValueError, match="layout 'voc' finds its own files: remove 'images' and 'masks'"):
        spec(source="local", files=[{"uri": "x"}], layout="voc", images="*.jpg")
    same_name = spec(source="http", files=[{"uri": "https://a.org/x/images.zip"}, {"uri": "https://b.org/images.zip"}])
    with pytest.raises(ValueError, match="would both be saved as 'images.zip'"):
        build_dataset("s", same_name, tmp_path / "o", tmp_path / "c", OPTIONS)


def test_carve_val_is_deterministic_and_rounds() -> None:
    ids = [f"img{i}" for i in range(5)]
    assert carve_val(ids, 0.3) == carve_val(list(reversed(ids)), 0.3)  # order of discovery does not matter
    assert len(carve_val(ids, 0.3)) == 2  # floor(0.3 * 5 + 0.5) = floor(2.0) = 2
    assert len(carve_val(ids[:3], 0.1)) == 0  # floor(0.3 + 0.5) = 0
    assert carve_val(ids, 0.0) == set()


def test_local_folders_and_archives_merge_into_one_tree(tmp_path: Path) -> None:
    (tmp_path / "part1" / "images").mkdir(parents=True)
    (tmp_path / "part1" / "images" / "a.jpg").write_bytes(jpg())
    masks_zip = tmp_path / "masks.zip"
    masks_zip.write_bytes(zip_bytes({"gt/a.png": png(saliency_mask()[0])}))
    fields = {"source": "local", "layout": "sod", "images": "images/*.jpg", "masks": "gt/{stem}.png"}
    merged = spec(files=[{"uri": str(tmp_path / "part1")}, {"uri": str(masks_zip)}], **fields)
    ds = Dataset(build_dataset("m", merged, tmp_path / "out", tmp_path / "cache", OPTIONS, progress=False))
    ds.validate(max_label=1, require_masks=True)
    assert [r.id for r in ds] == ["a"]
    (tmp_path / "part2" / "gt").mkdir(parents=True)
    (tmp_path / "part2" / "gt" / "a.png").write_bytes(b"clash")
    clash = spec(files=[{"uri": str(tmp_path / "part2")}, {"uri": str(masks_zip)}], **fields)
    with pytest.raises(ValueError, match=r"gt/a\.png.* would overwrite"):
        build_dataset("m", clash, tmp_path / "out", tmp_path / "cache", OPTIONS, progress=False)
    assert [r.id for r in Dataset(tmp_path / "out")] == ["a"]  # the previous data set is untouched
