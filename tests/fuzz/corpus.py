"""Write the hostile-input corpus: hand-made cases from issue 12 plus seeded mutations.

Each :class:`Case` is a path and what must happen when napari-medai opens it:
``"open"`` (with ``match`` in a warning when given), ``"refuse"`` (a MedaiError
whose message contains ``match`` when given), ``"declined"`` (not claimed by
napari-medai's reader, left to napari's other readers; the CLI refuses it) or
``"either"`` (mutations: any clean outcome). Nothing here decides pass or fail;
see ``run_cases.py`` and ``test_fuzz_corpus.py``.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import SimpleITK as sitk
from dicom_factory import write_enhanced, write_series
from pydicom.uid import DeflatedExplicitVRLittleEndian

from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import volume_to_sitk


@dataclass
class Case:
    """One input and the outcome it must have."""

    name: str
    path: str
    expect: str = "either"
    match: str = ""
    #: Compare a NIfTI that opens with nibabel's shape and affine.
    compare_nibabel: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class _Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: list[Case] = []
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, path: Path, expect: str = "either", match: str = "", **extra) -> None:
        self.cases.append(Case(name, str(path), expect, match, **extra))

    def path(self, name: str) -> Path:
        return self.root / name


# --- valid bases --------------------------------------------------------------------------


def _phantom_image() -> sitk.Image:
    volume, _ = make_phantom(shape=(6, 16, 20), spacing=(4.0, 2.0, 2.0), seed=0)
    return volume_to_sitk(volume)


def _write_bases(corpus: _Corpus) -> dict[str, Path]:
    image = _phantom_image()
    bases = {}
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
        path = corpus.path(f"phantom{suffix}")
        sitk.WriteImage(image, str(path), useCompression=suffix in (".nii.gz", ".nrrd"))
        bases[suffix] = path
        corpus.add(f"valid {suffix}", path, "open", compare_nibabel=suffix.startswith(".nii"))
    volume, _ = make_phantom(shape=(6, 16, 20), spacing=(4.0, 2.0, 2.0), seed=0)
    mgz = corpus.path("phantom.mgz")
    nibabel.save(nibabel.MGHImage(volume.array.T, volume.geometry.ras_affine()), mgz)
    bases[".mgz"] = mgz
    corpus.add("valid .mgz", mgz, "open", compare_nibabel=True)
    raw_mha = corpus.path("phantom_raw.mha")
    sitk.WriteImage(image, str(raw_mha), useCompression=False)
    bases["raw.mha"] = raw_mha
    mhd = corpus.path("phantom.mhd")
    sitk.WriteImage(image, str(mhd))
    corpus.add("valid .mhd + .raw", mhd, "open")
    nhdr = corpus.path("phantom.nhdr")
    sitk.WriteImage(image, str(nhdr))
    corpus.add("valid .nhdr + .raw", nhdr, "open")
    raw_nrrd = corpus.path("phantom_raw.nrrd")
    sitk.WriteImage(image, str(raw_nrrd), useCompression=False)
    bases["raw.nrrd"] = raw_nrrd
    series = corpus.path("series")
    rng = np.random.default_rng(1)
    paths = write_series(series, rng.integers(0, 1000, (5, 12, 10)).astype(np.int16))
    corpus.add("valid DICOM folder", series, "open")
    bases["dcm"] = paths[0]
    bases["series"] = series
    zipped = corpus.path("series.zip")
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in paths:
            archive.write(path, f"dicom/{path.name}")
    corpus.add("valid DICOM zip", zipped, "open")
    return bases


# --- the cases of issue 12 ----------------------------------------------------------------


def _nifti(corpus: _Corpus, name: str, patch, data=None, affine=None) -> Path:
    """A small NIfTI-1 written by nibabel, then patched byte-wise with ``patch(bytearray)``."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) if data is None else data
    image = nibabel.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0]) if affine is None else affine)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    path = corpus.path(name)
    plain = path.with_name(path.name.removesuffix(".gz"))
    nibabel.save(image, plain)
    raw = bytearray(plain.read_bytes())
    if patch is not None:
        patch(raw)
    if path != plain:
        plain.unlink()
        path.write_bytes(gzip.compress(bytes(raw)))
    else:
        path.write_bytes(bytes(raw))
    return path


def _put(offset: int, fmt: str, *values):
    def patch(raw: bytearray) -> None:
        raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)

    return patch


def _dicom_cases(corpus: _Corpus) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 1000, (4, 16, 16)).astype(np.int16)

    # 2: pixel bytes shorter than the header says
    for name, change in (
        ("rows raised", lambda ds: setattr(ds, "Rows", 64)),
        ("pixel data halved", lambda ds: setattr(ds, "PixelData", ds.PixelData[:256])),
        ("8 bits on 16-bit data", lambda ds: setattr(ds, "BitsAllocated", 8)),
    ):
        folder = corpus.path(f"dcm_{name.replace(' ', '_')}")
        for path in write_series(folder, pixels):
            ds = pydicom.dcmread(path)
            change(ds)
            ds.save_as(path)
        corpus.add(f"DICOM {name}", folder, "refuse", "bytes of pixel data")

    # 7: invalid orientation in every slice; an implausible rescale slope
    for name, iop in (("IOP zeros", (0,) * 6), ("IOP row = column", (1, 0, 0, 1, 0, 0))):
        folder = corpus.path(f"dcm_{name.replace(' ', '_').replace('=', 'eq')}")
        for path in write_series(folder, pixels):
            ds = pydicom.dcmread(path)
            ds.ImageOrientationPatient = list(iop)
            ds.save_as(path)
        corpus.add(f"DICOM {name}", folder, "open", "not two perpendicular unit vectors")
    enhanced = write_enhanced(
        corpus.path("enhanced_slope.dcm"),
        pixels,
        np.array([[0, 0, 2.0 * k] for k in range(4)]),
        slopes=[1e30] * 4,
    )
    corpus.add("enhanced RescaleSlope 1e30", enhanced, "refuse", "implausible rescale")

    # 11: slices at one position; enhanced frames at one position; mosaic
    folder = corpus.path("dcm_one_position")
    write_series(folder, pixels, positions=np.zeros((4, 3)))
    corpus.add("DICOM all slices at one position", folder, "refuse", "all lie at one position")
    enhanced = write_enhanced(corpus.path("enhanced_one_position.dcm"), pixels, np.zeros((4, 3)))
    corpus.add("enhanced frames at one position", enhanced, "refuse", "all lie at one position")
    folder = corpus.path("dcm_mosaic")
    for path in write_series(folder, pixels[:1]):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
        ds.save_as(path)
    corpus.add("Siemens mosaic", folder, "refuse", "Siemens mosaic")

    # 10: uneven spacing (so resampled) with 8.8e-7 mm of in-plane rounding
    folder = corpus.path("dcm_rounding")
    depths = np.array([0, 2, 4, 7.0])
    positions = np.column_stack([np.full(4, -20.0), np.full(4, -30.0), depths])
    positions[2, 0] += 8.8e-7
    write_series(folder, pixels, positions=positions)
    corpus.add("resampled grid with 8.8e-7 mm rounding", folder, "open", "unevenly spaced")

    # 13: a far-outlier slice
    folder = corpus.path("dcm_outlier")
    positions = np.array([[0, 0, 0], [0, 0, 2.5], [0, 0, 5.0], [0, 0, 205.0]])
    write_series(folder, pixels, positions=positions)
    corpus.add("far-outlier slice", folder, "open", "lie far from the other")

    # 14: deflated; a folder whose first 70 entries are not DICOM; one slice without position;
    # a DICOMDIR folder with a stray one-slice image
    deflated = corpus.path("deflated.dcm")
    ds = pydicom.dcmread(write_series(corpus.path("_deflate_src"), pixels[:1])[0])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    shutil.rmtree(corpus.path("_deflate_src"))
    corpus.add("deflated transfer syntax", deflated, "open")
    folder = corpus.path("dcm_late")
    (folder / "aaa").mkdir(parents=True)
    for k in range(70):
        (folder / "aaa" / f"note{k:02d}.txt").write_text("not dicom")
    write_series(folder / "zzz", pixels)
    corpus.add("DICOM after 70 other files", folder, "open")
    folder = corpus.path("dcm_one_unplaced")
    paths = write_series(folder, pixels)
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    corpus.add("one slice without position", folder, "open", "no usable position")
    folder = corpus.path("dcm_dicomdir")
    _dicomdir(folder, pixels)
    corpus.add("DICOMDIR folder", folder / "DICOMDIR", "open")

    # 15: garbage after a DICOM tag
    garbage = corpus.path("garbage.dcm")
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\0\x10\0UI\x08\0" + os.urandom(64))
    corpus.add("garbage after a DICOM tag", garbage, "refuse")


def _dicomdir(folder: Path, pixels: np.ndarray) -> None:
    """A DICOMDIR indexing a 4-slice series in sub-folders, and a stray one-slice image."""
    from pydicom.fileset import FileSet

    staging = folder.parent / "_dicomdir_src"
    series = write_series(staging, pixels)
    fileset = FileSet()
    for path in series:
        ds = pydicom.dcmread(path)
        ds.PatientID = "anon"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        fileset.add(ds)
    fileset.write(folder)
    write_series(folder, pixels[:1], names=["stray.dcm"])
    shutil.rmtree(staging)


def _file_cases(corpus: _Corpus, bases: dict[str, Path]) -> None:
    # 3: detached data outside the header's folder
    secret = corpus.root.parent / "outside.raw"
    secret.write_bytes(bytes(4096))
    nhdr = corpus.path("escape.nhdr")
    nhdr.write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 16\nencoding: raw\n"
        "data file: ../outside.raw\n"
    )
    corpus.add("NRRD data file ../", nhdr, "refuse", "outside its folder")
    nhdr = corpus.path("absolute.nhdr")
    nhdr.write_text(
        "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\ndata file: /etc/hostname\n"
    )
    corpus.add("NRRD absolute data file", nhdr, "refuse", "absolute path")
    mhd = corpus.path("escape.mhd")
    mhd.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 16\nElementType = MET_UCHAR\n"
        "ElementDataFile = ../outside.raw\n"
    )
    corpus.add("MHD ElementDataFile ../", mhd, "refuse", "outside its folder")

    # 4: decompression bombs
    bomb = corpus.path("bomb.zip")
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("filler.bin", bytes(16 << 20))
    corpus.add("zip of 16 MB zeros", bomb, "refuse", "holds no DICOM")
    big = _nifti(corpus, "promise.nii.gz", _put(40, "<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1))
    corpus.add("nii.gz promising terabytes", big, "refuse", "more than this computer can hold")
    long = corpus.path("long.nii.gz")
    header = nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    head = header.header.binaryblock + b"\0" * 4
    with gzip.open(long, "wb", compresslevel=1) as stream:
        stream.write(head + bytes(4 * 5 * 6 * 2) + bytes(16 << 20))
    corpus.add("nii.gz with 16 MB more data than promised", long, "open")

    # 5: MetaImage dimensions that crash ITK
    for ndims in (99, 0, -1, 5):
        path = corpus.path(f"ndims_{ndims}.mha")
        path.write_bytes(
            f"ObjectType = Image\nNDims = {ndims}\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
            "ElementDataFile = LOCAL\n".encode()
            + bytes(8)
        )
        corpus.add(f"MetaImage NDims = {ndims}", path, "refuse", "dimensions")

    # 8: complex NIfTI
    path = corpus.path("complex.nii")
    nibabel.save(nibabel.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), path)
    corpus.add("complex64 NIfTI", path, "refuse", "complex")

    # 12: qform and sform disagree; sheared sform
    def disagree(raw: bytearray) -> None:
        raw[280 + 12 : 280 + 16] = struct.pack("<f", 50.0)  # srow_x offset

    path = _nifti(corpus, "disagree.nii", disagree)
    corpus.add("qform/sform disagree", path, "open", "sform is used", compare_nibabel=True)
    shear = np.array([[2.0, 0.8, 0, 0], [0, 3, 0, 0], [0, 0, 4, 0], [0, 0, 0, 1]])
    path = _nifti(corpus, "shear.nii", None, affine=shear)
    corpus.add("sheared sform", path, "open", "sheared", compare_nibabel=True)

    # 14: scaling, dim[3] = 0, truncated gzip with a forged trailer
    for name, slope in (("slope0", 0.0), ("slopenan", float("nan"))):
        path = _nifti(corpus, f"{name}.nii", _put(112, "<2f", slope, 100.0))
        corpus.add(f"NIfTI scl_slope {slope}", path, "open", "scl_inter 100 ignored")
    path = _nifti(corpus, "dim3_zero.nii", _put(46, "<h", 0))
    corpus.add("NIfTI dim[3] = 0", path, "refuse", "size of 0")
    noise = np.random.default_rng(4).integers(-999, 999, (8, 8, 20)).astype(np.int16)
    full = _nifti(corpus, "_full.nii", None, data=noise)
    payload = full.read_bytes()
    full.unlink()
    compressed = gzip.compress(payload)
    forged = compressed[: len(compressed) // 3] + struct.pack("<II", 0, len(payload))
    path = corpus.path("forged_trailer.nii.gz")
    path.write_bytes(forged)
    corpus.add("truncated nii.gz with forged trailer", path, "refuse", "truncated")

    # 15: messages
    empty = corpus.path("empty_folder")
    empty.mkdir()
    corpus.add("empty folder", empty, "refuse", "empty")
    texts = corpus.path("text_folder")
    texts.mkdir()
    (texts / "a.txt").write_text("hello")
    corpus.add("folder of text files", texts, "refuse", "no DICOM")
    folder = corpus.path("folder.nii.gz")
    folder.mkdir()
    (folder / "x").write_text("x")
    corpus.add("folder named x.nii.gz", folder, "refuse", "is a folder")
    dangling = corpus.path("dangling.nii")
    dangling.symlink_to(corpus.path("nowhere.nii"))
    corpus.add("dangling symlink", dangling, "refuse", "broken symbolic link")
    loop = corpus.path("loop.nii")
    loop.symlink_to(loop)
    corpus.add("symlink loop", loop, "refuse", "loop")
    fifo = corpus.path("pipe.nii")
    os.mkfifo(fifo)
    corpus.add("FIFO", fifo, "refuse", "not a regular file")
    if os.geteuid() != 0:
        locked = corpus.path("locked.nii")
        shutil.copy(bases[".nii"], locked)
        locked.chmod(0)
        corpus.add("permission denied", locked, "refuse", "permission denied")
    path = _nifti(corpus, "zero_spacing.nii", _put(80, "<f", 0.0))
    corpus.add("NIfTI zero spacing", path, "refuse", "spacing of 0.0 mm")
    path = corpus.path("nifti2.nii")
    nibabel.save(nibabel.Nifti2Image(np.ones((4, 5, 6), np.int16), np.diag([2, 3, 4, 1.0])), path)
    corpus.add("valid NIfTI-2", path, "open", compare_nibabel=True)
    corpus.add("empty file", _empty(corpus.path("empty.nii")), "refuse", "empty")


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# --- mutations ----------------------------------------------------------------------------


def _mutations(corpus: _Corpus, sources: dict[str, Path], seed: int) -> None:
    """Truncations, header bit flips and extreme field values of each source file."""
    rng = random.Random(seed)
    for label, source in sources.items():
        data = source.read_bytes()
        stem = f"m_{label.strip('.').replace('.', '_')}"
        suffix = "".join(source.suffixes[-2:]) if source.name.endswith(".gz") else source.suffix
        header = _header_length(source, data)
        if not suffix or suffix == ".dcm":
            # DICOM: each mutation in a folder of its own, or its siblings join its series.
            suffix = suffix or ".dcm"
            stem = f"{stem}/"
        for fraction in (0.0, 0.1, 0.5, 0.9, 0.999):
            cut = max(1, int(len(data) * fraction))
            path = _fresh(corpus.path(f"{stem}_cut{int(fraction * 1000)}{suffix}"))
            path.write_bytes(data[:cut])
            corpus.add(f"{label} truncated at {fraction:.1%}", path)
        for flip in range(10):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                position = rng.randrange(min(header, len(mutated)))
                mutated[position] ^= 1 << rng.randrange(8)
            path = _fresh(corpus.path(f"{stem}_flip{flip}{suffix}"))
            path.write_bytes(bytes(mutated))
            corpus.add(f"{label} header bit flip {flip}", path)
        for swap in range(3):
            mutated = bytearray(data)
            a, b = sorted(rng.sample(range(0, min(header, len(data)) - 4, 4), 2))
            mutated[a : a + 4], mutated[b : b + 4] = data[b : b + 4], data[a : a + 4]
            path = _fresh(corpus.path(f"{stem}_swap{swap}{suffix}"))
            path.write_bytes(bytes(mutated))
            corpus.add(f"{label} swapped header words {swap}", path)


def _fresh(path: Path) -> Path:
    """``path`` with its folder made; a ``dir/_x`` name becomes ``dir_x/x`` (its own folder)."""
    if "/_" in str(path):
        folder, _, name = str(path).rpartition("/_")
        path = Path(f"{folder}_{name.rsplit('.', 1)[0]}") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _header_length(path: Path, data: bytes) -> int:
    """Where the header ends (bit flips land there; flips in voxels prove nothing)."""
    if path.name.endswith(".gz"):
        return min(len(data), 64)
    if path.suffix == ".nii":
        return 352
    if path.suffix in (".nrrd", ".mha"):
        end = data.find(b"\n\n") if path.suffix == ".nrrd" else data.find(b"LOCAL")
        return max(end, 16)
    return min(len(data), 1024)


def _field_cases(corpus: _Corpus, bases: dict[str, Path]) -> None:
    """Text-header fields set to hostile values, one at a time."""
    nrrd = bases["raw.nrrd"].read_bytes()
    head, _, body = nrrd.partition(b"\n\n")
    lines = head.decode().split("\n")
    hostile = {
        "sizes": ["0 16 20", "-1 16 20", "99999999 99999 9999", "6 16", "a b c"],
        "dimension": ["99", "0", "-3"],
        "type": ["block", "float128", "complex"],
        "encoding": ["zrl", "gzip", "bzip2", "hex"],
        "space directions": ["(0,0,0) (0,2,0) (0,0,4)", "(nan,0,0) (0,2,0) (0,0,4)"],
        "space origin": ["(nan,nan,nan)", "(1e308,1e308,1e308)"],
    }
    for key, values in hostile.items():
        for number, value in enumerate(values):
            changed = [f"{key}: {value}" if line.split(":")[0] == key else line for line in lines]
            if not any(line.startswith(f"{key}:") for line in lines):
                changed.insert(1, f"{key}: {value}")
            path = corpus.path(f"f_nrrd_{key.replace(' ', '_')}_{number}.nrrd")
            path.write_bytes("\n".join(changed).encode() + b"\n\n" + body)
            corpus.add(f"NRRD {key}: {value}", path)
    mha = bases["raw.mha"].read_bytes()
    cut = mha.index(b"ElementDataFile")
    end = mha.index(b"\n", cut) + 1
    text, body = mha[:end].decode(), mha[end:]
    hostile_mha = {
        "DimSize": ["0 16 20", "16 20", "99999 99999 99999", "-6 16 20"],
        "ElementType": ["MET_OTHER", "MET_STRING"],
        "ElementSpacing": ["0 2 2", "nan 2 2", "inf 2 2"],
        "ElementNumberOfChannels": ["0", "1000"],
        "CompressedData": ["True"],
        "HeaderSize": ["999999", "-1"],
        "TransformMatrix": ["nan 0 0 0 1 0 0 0 1", "0 0 0 0 0 0 0 0 0"],
    }
    for key, values in hostile_mha.items():
        for number, value in enumerate(values):
            lines = [line for line in text.split("\n") if not line.startswith(key + " ")]
            lines.insert(1, f"{key} = {value}")
            path = corpus.path(f"f_mha_{key}_{number}.mha")
            path.write_bytes("\n".join(lines).encode() + body)
            corpus.add(f"MetaImage {key} = {value}", path)
    nii = bases[".nii"].read_bytes()
    hostile_nii = {
        "dim": (40, "<8h", [(3, 32767, 32767, 32767, 1, 1, 1, 1), (8, 6, 16, 20, 1, 1, 1, 1)]),
        "datatype": (70, "<2h", [(32, 64), (1536, 128), (999, 16), (2, 99)]),
        "pixdim": (76, "<4f", [(1, float("nan"), 2, 2), (1, float("inf"), 2, 2), (1, -2, 2, 2)]),
        "vox_offset": (108, "<f", [(-352.0,), (1e12,), (float("nan"),)]),
        "scl": (112, "<2f", [(float("inf"), 0), (1, float("nan")), (1e38, 1e38)]),
        "quatern": (256, "<3f", [(float("nan"), 0, 0), (5, 5, 5)]),
        "srow": (280, "<4f", [(0, 0, 0, 0), (float("nan"), 0, 0, 0)]),
        "sizeof_hdr": (0, "<i", [(0,), (540,)]),
    }
    for key, (offset, fmt, choices) in hostile_nii.items():
        for number, values in enumerate(choices):
            mutated = bytearray(nii)
            mutated[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
            path = corpus.path(f"f_nii_{key}_{number}.nii")
            path.write_bytes(bytes(mutated))
            corpus.add(f"NIfTI {key} = {values}", path, compare_nibabel=True)


def _zip_cases(corpus: _Corpus, bases: dict[str, Path]) -> None:
    slip = corpus.path("slip.zip")
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../evil.dcm", bases["dcm"].read_bytes())
    corpus.add("zip slip", slip, "refuse", "outside the archive")
    broken = corpus.path("broken.zip")
    broken.write_bytes(corpus.path("series.zip").read_bytes()[:-40])
    corpus.add("truncated zip", broken, "refuse")
    mixed = corpus.path("crc.zip")
    data = bytearray(corpus.path("series.zip").read_bytes())
    data[200] ^= 0xFF
    mixed.write_bytes(bytes(data))
    corpus.add("zip with a bad CRC", mixed)
    raw = corpus.path("raw_deflate.bin")
    raw.write_bytes(zlib.compress(b"x" * 100))
    corpus.add("unknown file type (left to other readers)", raw, "declined", "not a scan")


# --- issue 17: bit rot, 5-D and vector NIfTI, shear in both NIfTI versions -----------------


def _rotted(path: Path, at: float) -> Path:
    """``path`` with 16 bytes flipped at ``at`` of the file (the stream's checksum intact)."""
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * at)
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
    rotted = path.with_name(f"rot{int(at * 100)}_{path.name}")
    rotted.write_bytes(bytes(raw))
    return rotted


def _bit_rot_cases(corpus: _Corpus) -> None:
    noise = np.random.default_rng(17).integers(-1000, 1000, (12, 40, 40)).astype(np.int16)
    image = sitk.GetImageFromArray(noise)
    for suffix, places in (
        (".nii.gz", (0.5, 0.8, 0.9, 0.95)),
        (".nrrd", (0.5, 0.8)),
        (".mha", (0.5, 0.8)),
    ):
        intact = corpus.path(f"noise{suffix}")
        sitk.WriteImage(image, str(intact), useCompression=True)
        for at in places:
            corpus.add(f"{suffix} bit rot at {at:.0%}", _rotted(intact, at), "refuse", "damaged")


def _nifti_of(corpus: _Corpus, name: str, image, patch=None) -> Path:
    path = corpus.path(name)
    nibabel.save(image, path)
    if patch is not None:
        raw = bytearray(path.read_bytes())
        patch(raw)
        path.write_bytes(bytes(raw))
    return path


def _issue17_nifti_cases(corpus: _Corpus) -> None:
    """5-D and vector NIfTI (SimpleITK errors and heap corruption before; nibabel reads them)."""
    grid = np.diag([2.0, 3.0, 4.0, 1.0])
    no_scaling = _put(112, "<2f", 0.0, 5.0)  # slope 0: scl_inter ignored
    for extra in ((1, 1), (2, 1)):
        data = np.arange(120 * extra[0], dtype=np.int16).reshape(4, 5, 6, *extra)
        name = "x".join(map(str, extra))
        path = _nifti_of(corpus, f"five_{name}.nii", nibabel.Nifti1Image(data, grid), no_scaling)
        corpus.add(f"NIfTI-1 4x5x6x{name}, slope 0", path, "open")
        path = _nifti_of(corpus, f"five2_{name}.nii", nibabel.Nifti2Image(data, grid))
        corpus.add(f"NIfTI-2 4x5x6x{name}", path, "open")
    data = np.zeros((4, 5, 6, 2, 3), np.int16)
    for version, image_type in ((1, nibabel.Nifti1Image), (2, nibabel.Nifti2Image)):
        path = _nifti_of(corpus, f"five{version}_2x3.nii", image_type(data, grid))
        corpus.add(f"NIfTI-{version} 4x5x6x2x3", path, "refuse", "4x5x6x2x3")
    for intent in (1006, 1007):
        image = nibabel.Nifti1Image(np.zeros((4, 5, 6, 1, 3), np.int16), grid)
        image.header.set_intent(intent)
        path = _nifti_of(corpus, f"vector_{intent}.nii", image, _put(112, "<2f", 2.0, 0.0))
        corpus.add(f"vector NIfTI (intent {intent}) scaled", path, "open")
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = _nifti_of(corpus, "rgb_slope0.nii", nibabel.Nifti1Image(rgb, grid), no_scaling)
    corpus.add("RGB NIfTI, slope 0", path, "open")
    path = _nifti_of(corpus, "flat2.nii", nibabel.Nifti2Image(np.ones((4, 5), np.int16), grid))
    corpus.add("2-D NIfTI-2", path, "open")
    shear = np.array([[2.0, 0.8, 0, 5], [0, 3, 0, 6], [0, 0, 4, 7], [0, 0, 0, 1]])
    for version, image_type in ((1, nibabel.Nifti1Image), (2, nibabel.Nifti2Image)):
        image = image_type(np.ones((4, 5, 6), np.int16), shear)
        image.set_qform(None, code=0)
        path = _nifti_of(corpus, f"shear{version}_sform_only.nii", image)
        corpus.add(
            f"sheared NIfTI-{version}, sform only", path, "open", "sheared", compare_nibabel=True
        )


def build_corpus(root: Path, real: Path | None = None, seed: int = 12) -> list[Case]:
    """Write every case under ``root``; ``real`` adds mutations of small real files."""
    corpus = _Corpus(root)
    bases = _write_bases(corpus)
    _dicom_cases(corpus)
    _file_cases(corpus, bases)
    _zip_cases(corpus, bases)
    _field_cases(corpus, bases)
    _bit_rot_cases(corpus)
    _issue17_nifti_cases(corpus)
    sources = {k: bases[k] for k in (".nii", ".nii.gz", ".mgz", "raw.nrrd", "raw.mha", "dcm")}
    if real is not None:
        for label, relative in (
            ("real CT_small", "pydicom_wheel/CT_small"),
            ("real minimal.nii.gz", "nifti_nimh/minimal.nii.gz"),
            ("real i2nii.mha", "i2nii/mha.mha"),
        ):
            if (real / relative).is_file():
                copy = corpus.path("real_" + Path(relative).name)
                shutil.copy(real / relative, copy)
                corpus.add(label, copy, "open")
                sources[label] = copy
        real_ct = real / "totalsegmentator" / "example_ct_sm.nii.gz"
        if real_ct.is_file():
            copy = corpus.path("real_example_ct_sm.nii.gz")
            shutil.copy(real_ct, copy)
            corpus.add("real CT .nii.gz bit rot at 80%", _rotted(copy, 0.8), "refuse", "damaged")
    _mutations(corpus, sources, seed)
    return corpus.cases
