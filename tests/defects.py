"""Generated bad input for the hardening and fuzz tests (issue 14): every defect file the adversarial
review found, made from a smooth synthetic chest-like film, so nothing binary is committed.

``good_dicom`` writes a valid CR chest DICOM; ``DEFECTS`` maps a defect name to a writer
``fn(path) -> expected`` where ``expected`` is a regex the rejection reason must match, or None
when the file must be read as a plausible film.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)


def chest(h: int = 320, w: int = 288, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth film with lung fields darker than the mediastinum, and a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    lungs = np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2))
    img = 0.75 - 0.45 * lungs + 0.05 * np.sin(x * 40) * (lungs > 0.3) + rng.normal(0, 0.01, (h, w))
    return np.clip(img * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16 if bits > 8 else np.uint8)


def _dataset(img: np.ndarray, ts=ExplicitVRLittleEndian, modality: str = "CR", **extra) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "DOE^JANE", "MRN-0042"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", "PA"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = 8 if img.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, 8 if bits == 8 else 12, (8 if bits == 8 else 12) - 1, 0
    ds.PixelData = img.tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def good_dicom(path: Path, seed: int = 0) -> Path:
    return _save(_dataset(chest(seed=seed)), path)


def good_rle(path: Path, seed: int = 0) -> Path:
    ds = _dataset(chest(seed=seed))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return _save(ds, path)


def good_jpeg(path: Path, seed: int = 0) -> Path:
    img = (chest(seed=seed) >> 4).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    ds = _dataset(img, ts=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    return _save(ds, path)


# --------------------------------------------------------------------------- defects


def slope_1e38(path: Path):
    _save(_dataset(chest(), RescaleSlope="1e-38", RescaleIntercept="0"), path)
    return r"implausible RescaleSlope"


def _lut_item(n: int = 4096) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [n, 0, 16]
    item.LUTData = (n - 1 - np.arange(n)).astype(np.uint16).tobytes()  # an inverting LUT
    item["LUTData"].VR = "OW"
    return item


def modality_lut_sequence(path: Path):
    item = _lut_item()
    item.ModalityLUTType = "OD"
    _save(_dataset(chest(), ModalityLUTSequence=Sequence([item])), path)
    return None


def voi_lut_sequence(path: Path):  # read with preprocess.voi_lut on
    _save(_dataset(chest(), VOILUTSequence=Sequence([_lut_item()])), path)
    return None


def png_bomb(path: Path, side: int = 20000):
    """A valid 8-bit greyscale PNG of side x side zeros: about 0.4 MB on disk, 400 MB decoded."""
    raw = zlib.compressobj(1)
    row = b"\0" * (side + 1)
    idat = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return r"image too large: .*limit of \d+ Mpx"


def deflate_bomb(path: Path, side: int = 16384):
    """A deflated DICOM whose 32-bit pixels inflate to 1 GiB, from about 1 MB on disk."""
    ds = _dataset(np.zeros((2, 2), np.uint16), ts=DeflatedExplicitVRLittleEndian)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = b""
    _save(ds, path)
    data = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack("<I", data[140:144])[0]
    body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    head = body[: body.rfind(b"\xe0\x7f\x10\x00")]  # everything before the (empty) Pixel Data element
    element = b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<I", side * side * 4)
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 24)
    out = [comp.compress(head + element)] + [comp.compress(zeros) for _ in range(side * side * 4 // len(zeros))]
    path.write_bytes(data[:meta_end] + b"".join(out) + comp.flush())
    return r"deflated data expands beyond|image too large"


def pixel_representation_flipped(path: Path):
    _save(_dataset(chest(), PixelRepresentation=1), path)
    return r"pixel values wrap around"


def bits_stored_too_small(path: Path):
    _save(_dataset(chest(), BitsStored=8, HighBit=7), path)
    return r"pixel values wrap around"


def rle_strip(path: Path):
    ds = _dataset(chest())
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.Rows = 1
    _save(ds, path)
    return r"decoded shape|smaller than a radiograph|cannot decode|truncated"


def tiny_strip(path: Path):
    _save(_dataset(chest(10, 45)), path)
    return r"smaller than a radiograph"


def corrupt_jpeg(path: Path):
    good_jpeg(path)
    data = bytearray(path.read_bytes())
    start = data.find(b"\xff\xda")  # damage the entropy-coded scan, not the headers
    for i in range(start + 200, len(data) - 40, (len(data) - start) // 9):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return r"corrupt compressed pixel data"


def corrupt_transfer_syntax(path: Path):
    good_dicom(path)
    data = path.read_bytes()
    path.write_bytes(data.replace(ExplicitVRLittleEndian.encode(), b"1.2.840.1AAAA.1.2.1"[: len(ExplicitVRLittleEndian)], 1))
    return r"corrupt header: element TransferSyntaxUID has an unreadable value \(the value is not a UID\)"


def bad_integer_string(path: Path):
    ds = _dataset(chest())
    ds.add_new((0x0028, 0x0008), "IS", "1")
    _save(ds, path)
    data = path.read_bytes()
    at = data.find(b"\x28\x00\x08\x00IS")
    path.write_bytes(data[: at + 8] + b"1A" + data[at + 10 :])
    return r"corrupt header: element NumberOfFrames"


def noise(path: Path):
    rng = np.random.default_rng(1)
    _save(_dataset(rng.integers(0, 4096, (320, 288)).astype(np.uint16)), path)
    return r"does not look like a radiograph"


def ct_slice(path: Path):
    _save(_dataset(chest(), modality="CT"), path)
    return r"out of scope: .*modality:CT"


def junk(path: Path):
    path.write_bytes(b"this is not an image\n" * 10)
    return r"unrecognised format"


def empty(path: Path):
    path.write_bytes(b"")
    return r"empty file"


DEFECTS = {f.__name__: f for f in (
    slope_1e38, modality_lut_sequence, voi_lut_sequence, png_bomb, deflate_bomb, pixel_representation_flipped,
    bits_stored_too_small, rle_strip, tiny_strip, corrupt_jpeg, corrupt_transfer_syntax, bad_integer_string, noise,
    ct_slice, junk, empty,
)}
SUFFIX = {"png_bomb": ".png"}
