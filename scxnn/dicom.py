"""Robust reading of radiographs: DICOM (CR/DX) and plain PNG/JPEG exports.

Everything comes out as a :class:`Radiograph`: 2-D float32 pixels in MONOCHROME2 sense
(higher = brighter = more attenuation), a small dict of *technical* header values (never
patient name/ID or other free text) and scope flags derived from the header.

Anything that cannot be turned into a trustworthy image raises :class:`ImageReadError`
(one error type, so callers can skip-and-log a bad file without catching half of
pydicom, numpy and OpenCV). That includes input pydicom would otherwise accept quietly:
pixel data dropped at an early end of file, native data shorter than Rows x Columns,
constant or non-finite images.

Pixel pipeline (DICOM), all on a header-only copy of the dataset because pydicom's
LUT functions may write to the dataset they are given:
    decode (pydicom masks BitsStored < BitsAllocated and sign-extends signed data)
    -> modality LUT (Rescale Slope/Intercept or Modality LUT Sequence)
    -> VOI LUT / windowing, only when ``voi_lut=True``
    -> MONOCHROME1 inversion (``max + min - x``).

Polarity is taken from the header, never guessed from the image content. A file whose
PhotometricInterpretation is wrong therefore comes out with the wrong polarity: e.g.
``torchxrayvision_Fake_MONOHR1.dcm`` (a MONOCHROME2 chest image whose header was rewritten
to MONOCHROME1 without inverting the pixels) is read as MONOCHROME1 and comes out
inverted (lungs bright), exactly ``max + min - x`` of the original. Detecting such
files needs an image-content check downstream; the reader stays predictable and
standard-conforming instead of second-guessing valid MONOCHROME1 data.

Scope: Modality must be CR or DX, BodyPartExamined must be CHEST, ViewPosition must not
be lateral. Empty values mean "unknown" and are not flagged (plain PNG/JPEG files carry
no header at all, and many chest DICOMs omit BodyPartExamined).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "ImageReadError",
    "Radiograph",
    "find_images",
    "read_image",
    "read_dicom",
    "read_plain",
    "radiograph_from_dataset",
    "scope_flags",
]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# Larger than any real radiograph detector; protects against corrupt Rows/Columns making
# decoders allocate gigabytes.
_MAX_SIDE = 16384
# The per-file memory budget, checked on the header before anything is decoded: the largest
# chest detectors are 43 x 43 cm at 0.1 mm, about 18.5 Mpx. The pixel pipeline holds a few
# float copies of the image, about 40 bytes per pixel at its peak, so 40 Mpx stays near 1.6 GB.
# Callers pass ``preprocess.max_megapixels``.
DEFAULT_MAX_MEGAPIXELS = 40.0
# A plausible Rescale Slope: real CR/DX files use 1 or small powers of ten; 1e-38 (a corrupt
# header) made every pixel the same float and broke the percentile step downstream.
_SLOPE_RANGE = (1e-6, 1e6)

_IN_SCOPE_MODALITIES = {"CR", "DX"}
_LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LEFT LATERAL", "RIGHT LATERAL"}

# Header elements the LUT stages read. Only these are copied, so the pixel pipeline can
# never write into the caller's dataset and never copies the (large) Pixel Data.
_LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


class ImageReadError(Exception):
    """The file cannot be turned into a trustworthy radiograph; ``reason`` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across multiprocessing workers
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class Radiograph:
    pixels: np.ndarray
    meta: dict = field(default_factory=dict)
    scope_flags: tuple[str, ...] = ()
    source: str = ""

    @property
    def in_scope(self) -> bool:
        return not self.scope_flags


# --------------------------------------------------------------------------- dispatch


def read_image(path, voi_lut: bool = False, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Radiograph:
    """Read a DICOM, PNG or JPEG file, choosing the reader from the magic bytes.

    Extensions are ignored: exported datasets routinely carry ``.dcm`` files without
    the DICM preamble or PNGs named ``.jpg``. A file whose header announces more than
    ``max_megapixels`` is refused before anything is decoded (decompression bombs).
    """
    head = _read_head(path, 132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return read_dicom(path, voi_lut=voi_lut, max_megapixels=max_megapixels)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return read_plain(path, max_megapixels=max_megapixels)
    if not head:
        raise ImageReadError(path, "empty file")
    raise ImageReadError(path, "unrecognised format (not DICOM Part 10, PNG or JPEG)")


def _read_head(path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as e:
        raise ImageReadError(path, f"cannot open: {e.strerror or e}") from e


# --------------------------------------------------------------------------- finding the files

# Files beside images in a dataset folder that are not images. Everything else found in a folder is
# tried and, when it is no DICOM / PNG / JPEG, becomes a row with the reason.
NOT_IMAGES = frozenset({".csv", ".md", ".txt", ".json", ".yaml", ".yml", ".py", ".html", ".pdf", ".zip", ".gz", ".xml", ".log"})


def find_images(inputs, strict: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files named, plus every non-hidden file under the folders named (recursively, following
    symbolic links, in path order), less :data:`NOT_IMAGES`; and ``(path, reason)`` for whatever
    could not be searched: a missing input, an unreadable folder, a symbolic-link loop, a broken
    link. The one folder scan of ``scxnn preprocess`` and ``scxnn predict``: nothing vanishes
    without a row saying why.

    ``strict`` (the commands): a named input that does not exist (a mistyped path) or inputs with no
    file at all are a :class:`FileNotFoundError` naming them, before any work starts."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            _walk(item, files, problems)
        elif item.is_file():
            files.append(item)
        else:
            problems.append((item, "no such file or folder" if not item.is_symlink() else "broken symbolic link"))
    files = list(dict.fromkeys(sorted(files, key=str)))
    if strict:
        named = {str(p) for p in map(Path, inputs)}
        missing = [str(p) for p, why in problems if str(p) in named]
        if missing:
            raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}; nothing was processed")
        if not files and not problems:
            raise FileNotFoundError(f"no files found in {', '.join(map(str, inputs))} (hidden files and text, table and "
                                    "archive files do not count); nothing was processed")
    return files, problems


def _walk(root: Path, files: list[Path], problems: list[tuple[Path, str]]) -> None:
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                problems.append((folder, "symbolic-link loop (or a second link to a folder already searched): not searched again"))
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            problems.append((folder, f"unreadable folder: {e.strerror or e}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    stack.append(path)
                elif entry.is_file():
                    if path.suffix.lower() not in NOT_IMAGES:
                        files.append(path)
                elif entry.is_symlink():
                    problems.append((path, "broken symbolic link"))
            except OSError as e:
                problems.append((path, f"unreadable: {e.strerror or e}"))


# --------------------------------------------------------------------------- DICOM


def read_dicom(path, voi_lut: bool = False, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Radiograph:
    """Read a DICOM Part 10 file (preamble + DICM required; no ``force=True``)."""
    _check_dicom_size(path, max_megapixels)
    with _pydicom_problems() as problems:
        try:
            # Deferred: Pixel Data stays on disk until the header has passed the budget check.
            ds = pydicom.dcmread(path, defer_size="4 MB")
        except InvalidDicomError as e:
            raise ImageReadError(path, f"not a DICOM file: {e}") from e
        except Exception as e:  # truncated/corrupt headers raise a zoo of types
            raise ImageReadError(path, _header_reason(e)) from e
    # pydicom drops encapsulated Pixel Data when the file ends early and only logs it.
    if problems and "PixelData" not in ds:
        raise ImageReadError(path, f"truncated file, pixel data lost ({_short(problems[0])})")
    return radiograph_from_dataset(ds, source=str(path), voi_lut=voi_lut, max_megapixels=max_megapixels)


def radiograph_from_dataset(ds: Dataset, source: str = "<dataset>", voi_lut: bool = False,
                            max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Radiograph:
    """Build a :class:`Radiograph` from an already-read dataset without modifying it."""
    try:
        # Header values are converted lazily, so warnings about them surface here.
        with _pydicom_problems():
            meta = dicom_meta(ds)
            _check_supported(ds, meta, source, max_megapixels)
            arr = _decode(ds, meta, source)
            _check_wraparound(arr, ds, meta, source)
            pixels = _to_monochrome2(arr, ds, voi_lut)
    except ImageReadError:
        raise
    except Exception as e:  # corrupt header values surface lazily, at first access
        raise ImageReadError(source, _header_reason(e)) from e
    _check_pixels(pixels, source)
    return Radiograph(pixels=pixels, meta=meta, scope_flags=scope_flags(meta), source=source)


def dicom_meta(ds: Dataset) -> dict:
    """Technical header values only (no PHI, no free text)."""
    tsyntax = _transfer_syntax(ds)
    return {
        "modality": _text(ds, "Modality").upper(),
        "body_part": _text(ds, "BodyPartExamined").upper(),
        "view": _text(ds, "ViewPosition").upper(),
        "photometric": _text(ds, "PhotometricInterpretation").upper(),
        "bits_stored": _int(ds, "BitsStored"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "pixel_representation": _int(ds, "PixelRepresentation"),
        "transfer_syntax": tsyntax.name if tsyntax else "",
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "pixel_spacing_mm": _pixel_spacing(ds),
        "study_date": _date(ds, "StudyDate"),
        "format": "dicom",
    }


def _transfer_syntax(ds: Dataset) -> UID | None:
    fm = getattr(ds, "file_meta", None)
    try:
        uid = fm.get("TransferSyntaxUID") if fm is not None else None
    except Exception as e:  # pydicom: "Invalid value for VR UI ..."
        raise HeaderValueError("TransferSyntaxUID", e) from e
    if uid and not all(part.isdigit() for part in str(uid).split(".")):
        raise HeaderValueError("TransferSyntaxUID", ValueError("the value is not a UID"))
    return UID(str(uid)) if uid else None


def _check_supported(ds: Dataset, meta: dict, source: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> None:
    """Refuse what this project cannot use, before spending time (and memory) on decoding."""
    if "PixelData" not in ds:
        raise ImageReadError(source, "no Pixel Data element (not an image, or dropped from a truncated file)")
    photometric = meta["photometric"]
    if not photometric:
        raise ImageReadError(source, "no Photometric Interpretation")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        kind = "palette colour" if photometric == "PALETTE COLOR" else "colour"
        raise ImageReadError(source, f"{kind} image ({photometric}) not supported")
    spp = _int(ds, "SamplesPerPixel", 1)
    if spp != 1:
        raise ImageReadError(source, f"{spp} samples per pixel not supported (greyscale only)")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise ImageReadError(source, f"multi-frame image ({frames} frames) not supported")
    rows, cols = meta["rows"], meta["columns"]
    if not (0 < rows <= _MAX_SIDE and 0 < cols <= _MAX_SIDE):
        raise ImageReadError(source, f"implausible image size {rows}x{cols} (Rows x Columns)")
    if meta["bits_allocated"] not in (1, 8, 16, 32):
        raise ImageReadError(source, f"unsupported Bits Allocated {meta['bits_allocated']}")
    check_budget(source, rows, cols, max_megapixels, frames, meta["bits_allocated"])
    if not 1 <= meta["bits_stored"] <= meta["bits_allocated"]:
        raise ImageReadError(source, f"corrupt header: Bits Stored {meta['bits_stored']} with Bits Allocated {meta['bits_allocated']}")
    if meta["pixel_representation"] not in (0, 1):
        raise ImageReadError(source, f"corrupt header: Pixel Representation {meta['pixel_representation']} (must be 0 or 1)")
    if _transfer_syntax(ds) is None:
        raise ImageReadError(source, "no Transfer Syntax UID in the file meta information")
    _check_rescale(ds, source)


def check_budget(source, rows: int, cols: int, max_megapixels: float, frames: int = 1, bits: int = 16) -> None:
    """Refuse an image whose header announces more than ``max_megapixels`` (the per-file memory
    budget, ``preprocess.max_megapixels``) before any decoder allocates it."""
    mpx = rows * cols * max(frames, 1) / 1e6
    if mpx > max_megapixels:
        raw_mb = mpx * max(bits, 8) / 8
        raise ImageReadError(source, f"image too large: {cols}x{rows} px x {max(frames, 1)} frame(s) = {mpx:.0f} Mpx "
                                     f"({raw_mb:.0f} MB decoded) exceeds the limit of {max_megapixels:g} Mpx "
                                     f"(preprocess.max_megapixels)")


def _check_dicom_size(path, max_megapixels: float) -> None:
    # The whole file is read into memory, and a deflated one inflated, before the header can be
    # checked: bound both by the budget (4 bytes per pixel covers 32-bit data, plus 16 MB of header).
    limit = int(max_megapixels * 1e6 * 4) + (16 << 20)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ImageReadError(path, f"cannot open: {e.strerror or e}") from e
    if size > limit:
        raise ImageReadError(path, f"file too large: {size / 1e6:.0f} MB is more than a {max_megapixels:g} Mpx image "
                                   f"can need (preprocess.max_megapixels)")
    try:
        # Inside the collector: pydicom's warnings quote raw header bytes, which can hold names.
        with _pydicom_problems():
            meta = pydicom.filereader.read_file_meta_info(path)
            tsyntax = str(meta.get("TransferSyntaxUID", ""))
            # The dataset after the file meta group (preamble, DICM, the group-length element, the group).
            start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    except Exception:
        return  # dcmread will report what is wrong with the header
    if tsyntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
        return
    with open(path, "rb") as fh:
        fh.seek(start)
        raw = fh.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    for at in range(0, len(raw), 1 << 16):  # inflate in slices, counting, never holding it all
        try:
            out = inflater.decompress(raw[at:at + (1 << 16)], limit)
        except zlib.error as e:
            raise ImageReadError(path, f"corrupt deflated data ({e})") from e
        limit -= len(out)
        if limit <= 0 or inflater.unconsumed_tail:
            raise ImageReadError(path, f"deflated data expands beyond what a {max_megapixels:g} Mpx image can need "
                                       f"(preprocess.max_megapixels): a decompression bomb or a corrupt file")


def _check_rescale(ds: Dataset, source: str) -> None:
    for keyword, ok in (("RescaleSlope", lambda v: _SLOPE_RANGE[0] <= abs(v) <= _SLOPE_RANGE[1]),
                        ("RescaleIntercept", lambda v: abs(v) <= 1e9)):
        try:
            value = ds.get(keyword, None)
            value = None if value is None or value == "" else float(value)
        except Exception as e:
            raise HeaderValueError(keyword, e) from e
        if value is not None and not (np.isfinite(value) and ok(value)):
            raise ImageReadError(source, f"corrupt header: implausible {keyword} {value:g}")


def _decode(ds: Dataset, meta: dict, source: str) -> np.ndarray:
    tsyntax = _transfer_syntax(ds)
    label = f"{tsyntax.name} ({tsyntax})"
    if not tsyntax.is_encapsulated:
        _check_native_length(ds, meta, source)
    else:
        decoder = _decoder_for(tsyntax)
        if decoder is None or not decoder.is_available:
            raise ImageReadError(source, f"no installed decoder for transfer syntax {label}")
        if tsyntax in _J2K_SYNTAXES:
            _check_j2k_codestream(ds, meta, source)
        elif tsyntax in _JPEG_SYNTAXES:
            _check_jpeg_frame_header(ds, meta, source)
    try:
        with _decoder_messages() as messages:
            arr = ds.pixel_array
    except Exception as e:  # decoder failures: RuntimeError, ValueError, plugin-specific types
        raise ImageReadError(source, f"cannot decode transfer syntax {label}: {_short(e)}") from e
    _check_decoder_messages(messages, source)
    if arr.shape != (meta["rows"], meta["columns"]):
        raise ImageReadError(source, f"decoded shape {arr.shape} != {meta['rows']}x{meta['columns']}")
    return arr


_J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}


def _check_j2k_codestream(ds: Dataset, meta: dict, source: str) -> None:
    # openjpeg trusts the codestream's SIZ marker: one corrupt byte there (found by the
    # fuzz test) made it decode a 256 x 15 million image for over a minute. Compare the
    # codestream geometry with Rows/Columns before handing it over.
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    at = frame.find(b"\xff\x4f\xff\x51")  # SOC then SIZ, mandatory at codestream start
    if at < 0 or len(frame) < at + 4 + 38:
        raise ImageReadError(source, "JPEG 2000 codestream has no SIZ header")
    _, _, xsiz, ysiz, xo, yo, xt, yt, xto, yto, _ = struct.unpack(">HHIIIIIIIIH", frame[at + 4 : at + 42])
    width, height = xsiz - xo, ysiz - yo
    if (height, width) != (meta["rows"], meta["columns"]):
        raise ImageReadError(
            source, f"JPEG 2000 codestream is {height}x{width} but the header says {meta['rows']}x{meta['columns']}"
        )
    tiles = -(-(xsiz - xto) // max(xt, 1)) * -(-(ysiz - yto) // max(yt, 1))
    if xt == 0 or yt == 0 or tiles > 65535:
        raise ImageReadError(source, f"implausible JPEG 2000 tiling ({xt}x{yt} tiles)")


_JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
}
# Start-of-frame markers of JPEG (C0-CF less DHT C4, JPG C8, DAC CC) and JPEG-LS (F7).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _check_jpeg_frame_header(ds: Dataset, meta: dict, source: str) -> None:
    # gdcm/CharLS abort the whole process (C++ std::terminate, found by the fuzz test)
    # on some corrupt frame headers, e.g. a JPEG-LS precision of 58 bits; validate the
    # SOF segment in Python first so such files become ImageReadError.
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    pos = 2 if frame[:2] == b"\xff\xd8" else -1
    while 0 <= pos and pos + 10 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            precision, components = frame[pos + 4], frame[pos + 9]
            height, width = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            if not 2 <= precision <= 16 or components != 1:
                raise ImageReadError(source, f"corrupt JPEG frame header ({precision}-bit, {components} components)")
            if (height, width) != (meta["rows"], meta["columns"]):
                raise ImageReadError(
                    source, f"JPEG frame is {height}x{width} but the header says {meta['rows']}x{meta['columns']}"
                )
            return
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + struct.unpack(">H", frame[pos + 2 : pos + 4])[0]
    raise ImageReadError(source, "JPEG codestream has no valid frame header")


def _decoder_for(tsyntax: UID):
    try:
        return pydicom.pixels.get_decoder(tsyntax)
    except NotImplementedError:  # no decoder class at all for this UID
        return None


def _check_native_length(ds: Dataset, meta: dict, source: str) -> None:
    # pydicom pads/zero-fills or only warns in some short-data cases; a short native
    # buffer always means a truncated file, so refuse it explicitly.
    n_pixels = meta["rows"] * meta["columns"]
    expected = (n_pixels + 7) // 8 if meta["bits_allocated"] == 1 else n_pixels * meta["bits_allocated"] // 8
    got = len(ds.PixelData)
    if got < expected:
        raise ImageReadError(source, f"truncated pixel data: {got} of {expected} bytes")


def _check_wraparound(arr: np.ndarray, ds: Dataset, meta: dict, source: str) -> None:
    """Refuse pixels that the header makes wrap around: a flipped Pixel Representation turns the
    bright half of an unsigned image negative, a too-small Bits Stored masks off high bits. Either
    way the decoded image has cliffs where the true one is smooth (the fuzz review found chest
    films decoded this way with a correlation of 0 to the truth). The test: the same samples read
    the other way (unsigned; all the bits allocated) are several times smoother."""
    from scxnn.plausibility import jump_share

    bits, alt, why = meta["bits_stored"], None, ""
    if meta["pixel_representation"] == 1 and arr.min() < 0:
        alt = np.where(arr < 0, arr.astype(np.int64) + (1 << bits), arr)
        why = "the header says signed (Pixel Representation 1) but the pixels read smoothly as unsigned"
    elif (bits < meta["bits_allocated"] and meta["bits_allocated"] in (8, 16, 32) and meta["pixel_representation"] == 0
          and not _transfer_syntax(ds).is_encapsulated):
        dtype = np.dtype(f"u{meta['bits_allocated'] // 8}").newbyteorder("<" if ds.original_encoding[1] is not False else ">")
        raw = np.frombuffer(ds.PixelData, dtype=dtype, count=arr.size).reshape(arr.shape)
        if raw.max() >> bits:
            alt = raw
            why = f"the header's Bits Stored ({bits}) cuts off high bits the pixels use"
    if alt is None:
        return
    as_read = jump_share(arr)
    if as_read > 0.002 and jump_share(alt) * 5 < as_read:
        raise ImageReadError(source, f"corrupt header: pixel values wrap around; {why}")


def _to_monochrome2(arr: np.ndarray, ds: Dataset, voi_lut: bool) -> np.ndarray:
    header = _lut_header(ds)
    out = apply_modality_lut(arr, header)
    if voi_lut:
        out = apply_voi_lut(out, header)
    out = np.asarray(out, dtype=np.float32)
    if header.PhotometricInterpretation == "MONOCHROME1":
        # Mirror within the image's own range so values stay in the same units/range.
        finite = out[np.isfinite(out)]
        if finite.size:
            out = np.float32(finite.max()) + np.float32(finite.min()) - out
    return out


def _lut_header(ds: Dataset) -> Dataset:
    header = Dataset()
    # The LUT Data (OW) inside Modality/VOI LUT Sequence items is decoded lazily, with the
    # byte order of the dataset that holds it: the copy needs the file's encoding, or pydicom
    # refuses every LUT sequence ("Unable to determine the endianness").
    fm = getattr(ds, "file_meta", None)
    if fm is not None:
        header.file_meta = copy.deepcopy(fm)
    header.set_original_encoding(ds.original_encoding[0], ds.original_encoding[1], ds.original_character_set)
    for kw in _LUT_KEYWORDS:
        if kw in ds:
            header[kw] = copy.deepcopy(ds[kw])
    return header


# --------------------------------------------------------------------------- plain images


def read_plain(path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Radiograph:
    """Read an 8- or 16-bit PNG/JPEG; grey-valued RGB(A) becomes grey, real colour is refused."""
    head = _read_head(path, 8)
    fmt = "png" if head.startswith(_PNG_MAGIC) else "jpeg" if head.startswith(_JPEG_MAGIC) else None
    if fmt is None:
        raise ImageReadError(path, "not a PNG or JPEG file")
    _check_plain_size(path, fmt, max_megapixels)
    try:
        # np.fromfile + imdecode copes with non-ASCII paths where cv2.imread does not.
        with _decoder_messages() as messages:
            img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception as e:
        raise ImageReadError(path, f"cannot decode {fmt}: {_short(e)}") from e
    if img is None:
        raise ImageReadError(path, f"cannot decode {fmt} (corrupt or truncated)")
    _check_decoder_messages(messages, str(path))
    img = _to_grey(img, path)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"unsupported sample type {img.dtype}")
    pixels = img.astype(np.float32)
    _check_pixels(pixels, str(path))
    bits = img.dtype.itemsize * 8
    meta = {
        "modality": "",
        "body_part": "",
        "view": "",
        "photometric": "MONOCHROME2",
        "bits_stored": bits,
        "bits_allocated": bits,
        "pixel_representation": 0,
        "transfer_syntax": "",
        "rows": int(img.shape[0]),
        "columns": int(img.shape[1]),
        "pixel_spacing_mm": None,
        "study_date": "",
        "format": fmt,
    }
    return Radiograph(pixels=pixels, meta=meta, scope_flags=scope_flags(meta), source=str(path))


def _check_plain_size(path, fmt: str, max_megapixels: float) -> None:
    """The budget check on the PNG IHDR or the JPEG frame header, before OpenCV allocates anything
    (a 10 MB PNG of 20000 x 20000 took 4.9 GB to decode)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if fmt == "png":
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageReadError(path, "corrupt PNG: no IHDR header")
        width, height = struct.unpack(">II", head[16:24])
        depth = head[24] if len(head) > 24 else 8
        check_budget(path, height, width, max_megapixels, bits=depth)
        return
    pos = 2
    while pos + 9 <= len(head) and head[pos] == 0xFF:
        marker = head[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            check_budget(path, height, width, max_megapixels, bits=head[pos + 4])
            return
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", head[pos + 2 : pos + 4])[0]
    # No frame header in the first 64 kB (huge EXIF/ICC blocks): OpenCV's own limit still applies.


def _to_grey(img: np.ndarray, path) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ImageReadError(path, f"unsupported image layout {img.shape}")
    colour = img[:, :, :3] if img.shape[2] >= 3 else img  # alpha carries no density
    first = colour[:, :, 0]
    if any(not np.array_equal(first, colour[:, :, c]) for c in range(1, colour.shape[2])):
        raise ImageReadError(path, "colour image (channels differ) not supported")
    return first


# --------------------------------------------------------------------------- scope


def scope_flags(meta: dict) -> tuple[str, ...]:
    """Reasons a file is out of the study's scope (chest PA/AP CR/DX); empty = in scope."""
    flags = []
    modality = str(meta.get("modality") or "").strip().upper()
    if modality and modality not in _IN_SCOPE_MODALITIES:
        flags.append(f"modality:{modality}")
    body_part = str(meta.get("body_part") or "").strip().upper()
    if body_part and body_part != "CHEST":
        flags.append(f"non_chest:{body_part}")
    view = str(meta.get("view") or "").strip().upper()
    if view in _LATERAL_VIEWS:
        flags.append("lateral")
    return tuple(flags)


# --------------------------------------------------------------------------- helpers


def _check_pixels(pixels: np.ndarray, source: str) -> None:
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageReadError(source, f"expected a 2-D image, got shape {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ImageReadError(source, "non-finite pixels")
    if pixels.min() == pixels.max():
        raise ImageReadError(source, "constant image")


@contextmanager
def _pydicom_problems() -> Iterator[list[str]]:
    """Collect what pydicom logs/warns instead of raising, and keep it off the console.

    Truncation is only *logged* by pydicom (with the element silently dropped), so the
    caller decides from these messages plus the dataset whether to fail.
    """
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("pydicom")
    handler = _Collect(level=logging.WARNING)
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught if str(w.message) not in messages)
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


# What libjpeg (inside gdcm, Pillow and OpenCV) prints when it meets damaged entropy-coded data
# and carries on with guessed pixels; the call itself succeeds. "extraneous bytes before marker
# 0xd9" alone (padding before the end-of-image marker) is harmless and not in the list.
_CORRUPT_DATA = ("corrupt jpeg data: premature end", "premature end of jpeg file", "bad huffman code",
                 "corrupt jpeg data: found marker", "huffman table", "invalid jpeg file structure")


@contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Capture what native decoders print on file descriptor 2 during the block (the only sign of
    damaged JPEG data). Nothing of it reaches the console: a batch over corrupt files would bury
    the progress bar in decoder chatter; it goes to the debug log."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(1 << 16).decode("utf-8", "replace")
            lines.extend(ln for ln in text.splitlines() if ln.strip())
            if lines:
                logging.getLogger("scxnn").debug("decoder messages: %s", "; ".join(lines)[:500])


def _check_decoder_messages(lines: list[str], source: str) -> None:
    bad = [ln.strip() for ln in lines if any(k in ln.lower() for k in _CORRUPT_DATA)]
    if bad:
        raise ImageReadError(source, f"corrupt compressed pixel data: the decoder reports {bad[0]!r} and would guess "
                                     "the missing pixels")


def _short(e: BaseException | str) -> str:
    """One-line error text; pydicom's multi-plugin errors span several lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = "; ".join(lines).replace(":;", ":") if lines else type(e).__name__
    # Library messages quote raw header bytes; from a corrupt file those can run into the patient's
    # name. Numbers and short codes stay (they say what was wrong); long or binary values go.
    text = re.sub(r"'[^']*'", lambda m: m[0] if len(m[0]) <= 26 and m[0].isprintable() else "'<value withheld>'", text)
    return text if len(text) <= 300 else text[:297] + "..."


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception as e:
        raise HeaderValueError(keyword, e) from e
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else ""
    return str(value or "").strip()


class HeaderValueError(ValueError):
    """A header element whose value cannot be read; becomes a reason that names the element."""

    def __init__(self, keyword: str, error: BaseException):
        self.keyword = keyword
        super().__init__(f"corrupt header: element {keyword} has an unreadable value ({_short(error)})")


def _header_reason(e: BaseException) -> str:
    if isinstance(e, HeaderValueError):
        return str(e)
    return f"unreadable DICOM ({type(e).__name__}: {_short(e)}); the file is corrupt or not a standard DICOM"


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            return default
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        return int(value)
    except Exception as e:  # a corrupt IS/US value ("1A") must not pass as a default
        raise HeaderValueError(keyword, e) from e


def _pixel_spacing(ds: Dataset) -> float | None:
    """Mean of the row/column spacing; zeros (seen in real CR files) mean unknown."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:  # optional: a corrupt value means unknown, not an unreadable film
            value = ds.get(keyword, None)
            values = [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]
        except Exception:
            continue
        if len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values):
            return float(np.mean(values))
    return None


def _date(ds: Dataset, keyword: str) -> str:
    try:
        value = str(ds.get(keyword, "") or "").strip()
    except Exception:  # optional, like the spacing
        return ""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return ""

