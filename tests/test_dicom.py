"""Tests for scxnn.dicom: DICOM/PNG/JPEG reading, pixel pipeline, refusal and scope rules."""

from __future__ import annotations

import copy
import csv
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from conftest import require_shared
from scxnn.dicom import (
    ImageReadError,
    Radiograph,
    radiograph_from_dataset,
    read_dicom,
    read_image,
    read_plain,
    scope_flags,
)


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:  # only in the downloadable pydicom-data set
        pytest.skip(f"pydicom test file {name} not available offline")
    return str(path)


def _ramp(rows=32, cols=48, lo=0, hi=4095, dtype=np.uint16) -> np.ndarray:
    return np.linspace(lo, hi, rows * cols).reshape(rows, cols).round().astype(dtype)


def _dataset(arr: np.ndarray, photometric="MONOCHROME2", bits_stored=None, big_endian=False, **tags) -> Dataset:
    """A minimal single-frame CR dataset holding `arr` natively."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-123"
    ds.StudyDate = "20240131"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    order = ">" if big_endian else "<"
    ds.PixelData = arr.astype(arr.dtype.newbyteorder(order)).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _is_plausible(r: Radiograph) -> bool:
    p = r.pixels
    return p.ndim == 2 and p.dtype == np.float32 and bool(np.isfinite(p).all()) and p.min() < p.max()


# --------------------------------------------------------------------------- error type


def test_error_message_and_attributes():
    e = ImageReadError("a/b.dcm", "constant image")
    assert str(e) == "a/b.dcm: constant image"
    assert (e.path, e.reason) == ("a/b.dcm", "constant image")


# --------------------------------------------------------------------------- pydicom's files


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",  # explicit VR little endian, signed
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (openjpeg)
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS (gdcm)
        "MR_small_padded.dcm",  # trailing padding after Pixel Data is fine
    ],
)
def test_transfer_syntaxes_give_identical_pixels(name):
    ref = read_dicom(_testfile("MR_small.dcm")).pixels
    r = read_dicom(_testfile(name))
    assert _is_plausible(r)
    np.testing.assert_array_equal(r.pixels, ref)
    assert ref.min() == 127 and ref.max() == 2145  # signed 16-bit, no rescale


def test_big_endian_meta():
    r = read_dicom(_testfile("MR_small_bigendian.dcm"))
    assert r.meta["transfer_syntax"] == "Explicit VR Big Endian"
    assert r.meta["pixel_representation"] == 1
    assert r.scope_flags == ("modality:MR",) and not r.in_scope


def test_ct_signed_with_modality_lut():
    path = _testfile("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array  # int16, rescale 1 / -1024
    r = read_dicom(path)
    np.testing.assert_array_equal(r.pixels, raw.astype(np.float32) - 1024)
    assert r.pixels.min() < 0
    assert r.scope_flags == ("modality:CT",)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("image_dfl.dcm", (512, 512)),  # deflated explicit VR LE
        ("JPEG2000.dcm", (1024, 256)),  # JPEG 2000 lossy
        ("693_J2KI.dcm", (512, 512)),
        ("JPEGLSNearLossless_16.dcm", (50, 10)),
        ("JPEGLSNearLossless_08.dcm", (45, 10)),
        ("rtdose_rle_1frame.dcm", (10, 10)),  # RLE, 32-bit
    ],
)
def test_other_decodable_files(name, shape):
    r = read_image(_testfile(name))
    assert _is_plausible(r) and r.pixels.shape == shape
    assert r.meta["format"] == "dicom"


def test_jpeg_baseline_monochrome(tmp_path):
    img = _ramp(64, 64, 10, 240, np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds = _dataset(img)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    r = read_dicom(_save(ds, tmp_path / "jpeg.dcm"))
    assert r.meta["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert np.abs(r.pixels - img).max() <= 4  # lossy


def test_12bit_jpeg_extended_is_a_clear_error():
    # No installed decoder (gdcm, pillow; pylibjpeg-libjpeg deliberately absent) does
    # 12-bit JPEG Extended: the reason must name the transfer syntax and UID.
    with pytest.raises(ImageReadError) as ei:
        read_image(_testfile("JPEG-lossy.dcm"))
    assert "JPEG Extended (Process 2 and 4)" in ei.value.reason
    assert "1.2.840.10008.1.2.4.51" in ei.value.reason


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("SC_rgb_rle.dcm", "colour image (RGB)"),
        ("examples_rgb_color.dcm", "colour image (RGB)"),
        ("SC_jpeg_no_color_transform.dcm", "colour image (RGB)"),
        ("examples_ybr_color.dcm", "colour image (YBR_FULL_422)"),
        ("examples_palette.dcm", "palette colour image (PALETTE COLOR)"),
        ("rtdose.dcm", "multi-frame image (15 frames)"),
        ("rtplan.dcm", "no Pixel Data"),
        ("test-SR.dcm", "no Pixel Data"),
        ("MR_truncated.dcm", "truncated pixel data"),
    ],
)
def test_refused_files(name, fragment):
    path = _testfile(name)
    with pytest.raises(ImageReadError) as ei:
        read_image(path)
    assert fragment in ei.value.reason
    assert ei.value.path == path and str(ei.value).startswith(path)


# --------------------------------------------------------------------------- constructed datasets


def test_monochrome1_is_inverted(tmp_path):
    arr = _ramp()
    r1 = read_dicom(_save(_dataset(arr, "MONOCHROME1"), tmp_path / "m1.dcm"))
    r2 = read_dicom(_save(_dataset(arr, "MONOCHROME2"), tmp_path / "m2.dcm"))
    np.testing.assert_array_equal(r1.pixels, arr.max() + arr.min() - arr.astype(np.float32))
    np.testing.assert_array_equal(r2.pixels, arr.astype(np.float32))
    assert r1.meta["photometric"] == "MONOCHROME1"


def test_bits_stored_masks_garbage_high_bits(tmp_path):
    arr = _ramp(hi=4095)
    garbage = arr | np.uint16(0xA000)  # overlay / junk in bits 12-15
    r = read_dicom(_save(_dataset(garbage, bits_stored=12), tmp_path / "b12.dcm"))
    np.testing.assert_array_equal(r.pixels, arr.astype(np.float32))
    assert r.meta["bits_stored"] == 12 and r.meta["bits_allocated"] == 16


def test_signed_pixels_with_bits_stored_sign_extend(tmp_path):
    arr = _ramp(lo=-2048, hi=2047, dtype=np.int16)
    stored = (arr.view(np.uint16) & np.uint16(0x0FFF)) | np.uint16(0x5000)  # 12-bit two's complement + junk
    ds = _dataset(stored.view(np.int16), bits_stored=12)
    r = read_dicom(_save(ds, tmp_path / "s12.dcm"))
    np.testing.assert_array_equal(r.pixels, arr.astype(np.float32))
    assert r.meta["pixel_representation"] == 1


def test_big_endian_constructed_matches_little(tmp_path):
    arr = _ramp(lo=-1000, hi=3000, dtype=np.int16)
    le = read_dicom(_save(_dataset(arr), tmp_path / "le.dcm"))
    be = read_dicom(_save(_dataset(arr, big_endian=True), tmp_path / "be.dcm"))
    np.testing.assert_array_equal(le.pixels, be.pixels)
    np.testing.assert_array_equal(le.pixels, arr.astype(np.float32))


def test_rescale_then_voi_then_monochrome1_and_no_mutation():
    arr = _ramp(hi=1000)
    ds = _dataset(arr, "MONOCHROME1", RescaleSlope="2", RescaleIntercept="-100", WindowCenter="500", WindowWidth="400")
    before = copy.deepcopy(ds)

    plain = radiograph_from_dataset(ds).pixels
    linear = arr.astype(np.float32) * 2 - 100
    np.testing.assert_array_equal(plain, linear.max() + linear.min() - linear)

    windowed = radiograph_from_dataset(ds, voi_lut=True).pixels
    assert windowed.dtype == np.float32
    assert windowed.max() - windowed.min() > 0
    # Windowing clips: the darkest/brightest quarter of the ramp saturates.
    assert np.isclose(windowed, windowed.max()).mean() > 0.2
    assert np.isclose(windowed, windowed.min()).mean() > 0.2
    # MONOCHROME1: the lowest stored values become the brightest output.
    assert windowed.flat[0] == windowed.max() and plain.flat[0] == plain.max()

    assert ds == before
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PixelData == before.PixelData


def test_voi_lut_sequence_applied_only_on_request(tmp_path):
    arr = _ramp(hi=255)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new("LUTData", "US", [255 - i for i in range(256)])  # an inverting LUT proves it was used
    ds = _dataset(arr, VOILUTSequence=[lut])
    path = _save(ds, tmp_path / "voi.dcm")
    np.testing.assert_array_equal(read_dicom(path).pixels, arr.astype(np.float32))
    np.testing.assert_array_equal(read_dicom(path, voi_lut=True).pixels, 255 - arr.astype(np.float32))


def test_meta_is_technical_only(tmp_path):
    ds = _dataset(_ramp(), PixelSpacing=[0.14, 0.16])
    r = read_dicom(_save(ds, tmp_path / "m.dcm"))
    assert r.meta == {
        "modality": "CR",
        "body_part": "CHEST",
        "view": "PA",
        "photometric": "MONOCHROME2",
        "bits_stored": 16,
        "bits_allocated": 16,
        "pixel_representation": 0,
        "transfer_syntax": "Explicit VR Little Endian",
        "rows": 32,
        "columns": 48,
        "pixel_spacing_mm": pytest.approx(0.15),
        "study_date": "2024-01-31",
        "format": "dicom",
    }
    assert "Doe" not in repr(r.meta) and "SECRET" not in repr(r.meta)
    assert r.in_scope and r.scope_flags == ()


def test_imager_pixel_spacing_fallback_and_zero_spacing(tmp_path):
    r = radiograph_from_dataset(_dataset(_ramp(), ImagerPixelSpacing=[0.2, 0.2]))
    assert r.meta["pixel_spacing_mm"] == pytest.approx(0.2)
    r = radiograph_from_dataset(_dataset(_ramp(), PixelSpacing=[0, 0]))
    assert r.meta["pixel_spacing_mm"] is None


def test_constant_image_refused(tmp_path):
    arr = np.full((16, 16), 7, np.uint16)
    with pytest.raises(ImageReadError, match="constant image"):
        read_dicom(_save(_dataset(arr), tmp_path / "c.dcm"))


@pytest.mark.parametrize("slope, intercept", [("NaN", "0"), ("1e-38", "0"), ("0", "0"), ("1e9", "0"), ("1", "1e300")])
def test_corrupt_rescale_refused_before_decoding(slope, intercept):
    # Non-finite or absurd values can only come from a corrupt header; 1e-38 made every pixel the
    # same float32 and used to end a whole predict batch in the percentile step.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about "NaN" as a DS value
        ds = _dataset(_ramp(), RescaleSlope=slope, RescaleIntercept=intercept)
    with pytest.raises(ImageReadError, match="corrupt header: implausible Rescale"):
        radiograph_from_dataset(ds)


def test_truncated_native_pixel_data(tmp_path):
    ds = _dataset(_ramp())
    ds.PixelData = ds.PixelData[:-100]
    with pytest.raises(ImageReadError, match="truncated pixel data"):
        read_dicom(_save(ds, tmp_path / "t.dcm"))


def test_truncated_file_native_cut(tmp_path):
    raw = Path(_testfile("MR_small.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ImageReadError):
        read_image(cut)


def test_truncated_encapsulated_mid_fragment(tmp_path, caplog):
    # pydicom only logs "End of file reached before delimiter" and drops Pixel Data.
    raw = Path(_testfile("MR_small_jp2klossless.dcm")).read_bytes()
    start = raw.rfind(b"\xfe\xff\x00\xe0")  # last item tag = the (only) frame fragment
    cut = tmp_path / "cut_j2k.dcm"
    cut.write_bytes(raw[: start + (len(raw) - start) // 2])
    with pytest.raises(ImageReadError, match="truncated|Pixel Data"):
        read_image(cut)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]  # captured, not leaked


def test_frames_and_samples_refused_constructed():
    ds = _dataset(_ramp(), NumberOfFrames=2)
    with pytest.raises(ImageReadError, match="multi-frame"):
        radiograph_from_dataset(ds)


@pytest.mark.parametrize("content", [b"", b"hello, not an image\n" * 20, b"\x89PNG\r\n\x1a\n" + b"\0" * 200])
def test_non_dicom_input_to_read_dicom(tmp_path, content):
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as ei:
        read_dicom(path)
    assert ei.value.path == str(path)


def test_read_image_dispatches_on_magic_not_extension(tmp_path):
    png = tmp_path / "really_png.dcm"
    cv2.imwrite(str(tmp_path / "a.png"), _ramp(8, 8, 0, 255, np.uint8))
    png.write_bytes((tmp_path / "a.png").read_bytes())
    assert read_image(png).meta["format"] == "png"
    dcm = tmp_path / "really_dicom.png"
    _save(_dataset(_ramp()), dcm)
    assert read_image(dcm).meta["format"] == "dicom"
    for content, reason in [(b"", "empty file"), (b"GIF89a" + b"\0" * 200, "unrecognised format")]:
        p = tmp_path / "other.png"
        p.write_bytes(content)
        with pytest.raises(ImageReadError, match=reason):
            read_image(p)
    with pytest.raises(ImageReadError, match="cannot open"):
        read_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    "meta, flags",
    [
        ({"modality": "CR", "body_part": "CHEST", "view": "PA"}, ()),
        ({"modality": "DX", "body_part": "", "view": "AP"}, ()),
        ({"modality": "", "body_part": "", "view": ""}, ()),
        ({"modality": "dx", "body_part": "chest", "view": "pa"}, ()),
        ({"modality": "MR", "body_part": "CHEST", "view": ""}, ("modality:MR",)),
        ({"modality": "CR", "body_part": "HIP", "view": ""}, ("non_chest:HIP",)),
        ({"modality": "CR", "body_part": "CHEST", "view": "LL"}, ("lateral",)),
        ({"modality": "CR", "body_part": "CHEST", "view": "LATERAL"}, ("lateral",)),
        ({"modality": "CT", "body_part": "ABDOMEN", "view": "RL"}, ("modality:CT", "non_chest:ABDOMEN", "lateral")),
    ],
)
def test_scope_flags(meta, flags):
    assert scope_flags(meta) == flags


# --------------------------------------------------------------------------- plain images


def _write(tmp_path, name, img) -> Path:
    path = tmp_path / name
    assert cv2.imwrite(str(path), img)
    return path


def test_png_8_and_16_bit(tmp_path):
    for img, bits in [(_ramp(20, 30, 0, 255, np.uint8), 8), (_ramp(20, 30, 0, 60000, np.uint16), 16)]:
        r = read_image(_write(tmp_path, f"g{bits}.png", img))
        np.testing.assert_array_equal(r.pixels, img.astype(np.float32))
        assert r.meta["format"] == "png" and r.meta["bits_stored"] == bits
        assert r.meta["rows"] == 20 and r.meta["columns"] == 30
        assert r.in_scope and r.pixels.dtype == np.float32


def test_png_grey_rgb_and_rgba_become_grey(tmp_path):
    grey = _ramp(20, 30, 0, 255, np.uint8)
    rgb = np.dstack([grey] * 3)
    rgba = np.dstack([grey] * 3 + [np.full_like(grey, 255)])
    for name, img in [("rgb.png", rgb), ("rgba.png", rgba)]:
        np.testing.assert_array_equal(read_plain(_write(tmp_path, name, img)).pixels, grey.astype(np.float32))


def test_colour_png_refused(tmp_path):
    img = np.dstack([_ramp(20, 30, 0, 255, np.uint8)] * 3)
    img[5, 5, 2] = 17
    with pytest.raises(ImageReadError, match="colour"):
        read_plain(_write(tmp_path, "colour.png", img))


def test_jpeg_grey_and_grey_rgb(tmp_path):
    grey = _ramp(64, 64, 20, 230, np.uint8)
    r = read_image(_write(tmp_path, "g.jpg", grey))
    assert r.meta["format"] == "jpeg" and np.abs(r.pixels - grey).max() <= 4
    r = read_image(_write(tmp_path, "rgb.jpg", np.dstack([grey] * 3)))
    assert r.pixels.ndim == 2 and np.abs(r.pixels - grey).max() <= 4


def test_constant_and_corrupt_plain_refused(tmp_path):
    with pytest.raises(ImageReadError, match="constant image"):
        read_plain(_write(tmp_path, "c.png", np.full((8, 8), 9, np.uint8)))
    png = _write(tmp_path, "ok.png", _ramp(32, 32, 0, 255, np.uint8)).read_bytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(png[:40])
    with pytest.raises(ImageReadError, match="cannot decode png"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="not a PNG or JPEG"):
        read_plain(_save(_dataset(_ramp()), tmp_path / "d.dcm"))


# --------------------------------------------------------------------------- real CR samples


def _inventory(root: Path) -> list[dict]:
    with open(root / "inventory.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _real_rows():
    root = require_shared("realdata", "dicom_cr_samples")
    return root, _inventory(root)


@pytest.mark.realdata
def test_real_samples_decode_or_fail_clearly():
    root, rows = _real_rows()
    assert {row["path"] for row in rows} == {str(p.relative_to(root)) for p in root.rglob("*.dcm")}
    for row in rows:
        path = root / row["path"]
        if row["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.51":  # 12-bit JPEG extended
            with pytest.raises(ImageReadError) as ei:
                read_image(path)
            assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in ei.value.reason
            continue
        r = read_image(path)
        assert _is_plausible(r), row["path"]
        assert r.pixels.shape == (int(row["rows"]), int(row["cols"]))
        assert r.meta["photometric"] == row["photometric"]
        assert r.meta["transfer_syntax"] == row["transfer_syntax"]
        # No rescale in these files: the range is the stored range (mirrored for MONOCHROME1).
        assert (r.pixels.min(), r.pixels.max()) == (float(row["min"]), float(row["max"]))
        if row["path"].startswith("non_chest_cr/"):
            assert not r.in_scope and r.scope_flags[0].startswith("non_chest:")
        else:
            assert r.in_scope, row["path"]


@pytest.mark.realdata
def test_real_hip_and_tibia_flagged():
    root = require_shared("realdata", "dicom_cr_samples")
    assert read_image(root / "non_chest_cr/WG04_RG2_rle.dcm").scope_flags == ("non_chest:HIP",)
    assert read_image(root / "non_chest_cr/WG04_RG3_rle.dcm").scope_flags == ("non_chest:EXTREMITY",)


def _lungs_darker_than_mediastinum(p: np.ndarray) -> bool:
    """PA chest: lung fields (mid-height, either side) are darker than the central column."""
    h, w = p.shape
    band = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.concatenate(
        [p[band, int(0.2 * w) : int(0.35 * w)].ravel(), p[band, int(0.65 * w) : int(0.8 * w)].ravel()]
    ).mean()
    mediastinum = p[band, int(0.45 * w) : int(0.55 * w)].mean()
    return lungs < mediastinum and lungs < np.median(p)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name",
    [
        "chest/WG04_RG1_j2k_lossy.dcm",  # MONOCHROME1
        "chest/WG04_RG1_jpegls_near_lossless.dcm",  # MONOCHROME1
        "chest/SIIM_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",  # MONOCHROME2
    ],
)
def test_real_chest_polarity(name):
    root = require_shared("realdata", "dicom_cr_samples")
    r = read_image(root / name)
    assert _lungs_darker_than_mediastinum(r.pixels)
    for voi in (False, True):  # windowing must not flip polarity either
        assert _lungs_darker_than_mediastinum(read_image(root / name, voi_lut=voi).pixels)


@pytest.mark.realdata
def test_fake_monochrome1_follows_the_header():
    # The file is the SIIM image with PhotometricInterpretation rewritten to MONOCHROME1
    # but pixels left as MONOCHROME2. The reader trusts the header (documented in
    # scxnn.dicom): it comes out exactly mirrored, i.e. with the wrong polarity.
    root = require_shared("realdata", "dicom_cr_samples")
    fake = read_image(root / "derived_modified/torchxrayvision_Fake_MONOHR1.dcm")
    real = read_image(root / "chest/SIIM_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    assert fake.meta["photometric"] == "MONOCHROME1" and fake.in_scope
    np.testing.assert_array_equal(fake.pixels, real.pixels.max() + real.pixels.min() - real.pixels)
    assert not _lungs_darker_than_mediastinum(fake.pixels)


# --------------------------------------------------------------------------- fuzzing

_FUZZ_SOURCES = {
    name: Path(get_testdata_file(name)).read_bytes()
    for name in (
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "JPEG2000.dcm",
        "JPEGLSNearLossless_08.dcm",
    )
    if get_testdata_file(name)
}


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(sorted(_FUZZ_SOURCES)),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=8),
    voi=st.booleans(),
)
def test_fuzz_corrupt_dicom_only_raises_image_read_error(tmp_path, name, cut, flips, voi):
    data = bytearray(_FUZZ_SOURCES[name])
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(bytes(data))
    try:
        r = read_image(path, voi_lut=voi)
    except ImageReadError as e:
        assert e.path == str(path) and e.reason
    else:
        assert _is_plausible(r)


def _patched(tmp_path, name: str, find: bytes, replace: bytes) -> Path:
    raw = Path(_testfile(name)).read_bytes()
    at = raw.rfind(find)
    assert at > 0
    path = tmp_path / f"patched_{name}"
    path.write_bytes(raw[:at] + replace + raw[at + len(replace) :])
    return path


def test_regression_j2k_huge_codestream_size(tmp_path):
    # Found by fuzzing: one byte in the SIZ marker made openjpeg decode 256 x 15e6 (> 1 min).
    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00\x00\x00\x01\x00\x00\x00\x04\x00"  # 256 wide, 1024 high
    path = _patched(tmp_path, "JPEG2000.dcm", siz, siz[:-4] + b"\x00\xe6\x04\x00")
    with pytest.raises(ImageReadError, match="codestream is 15074304x256"):
        read_image(path)


def test_regression_jpeg_ls_bad_precision_no_abort(tmp_path):
    # Found by fuzzing: a 58-bit JPEG-LS precision made gdcm/CharLS std::terminate the process.
    sof = b"\xff\xd8\xff\xf7\x00\x0b\x08"
    path = _patched(tmp_path, "JPEGLSNearLossless_08.dcm", sof, sof[:-1] + b"\x3a")
    with pytest.raises(ImageReadError, match="corrupt JPEG frame header"):
        read_image(path)
