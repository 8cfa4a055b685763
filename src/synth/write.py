"""DICOM writing: one series as {instance}.dcm files with the geometry a reader will see."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless, generate_uid
from pydicom.valuerep import DSfloat

from ..core.atomic import atomic_path, write_bytes
from .config import SynthConfig
from .render import SliceSpec


def _ds(values) -> list:
    return [DSfloat(float(v), auto_format=True) for v in values]


def write_series(
    directory: Path,
    images: list[np.ndarray],
    specs: list[SliceSpec],
    pose: tuple[np.ndarray, np.ndarray],
    meta: dict,
    rng: np.random.Generator,
    cfg: SynthConfig,
) -> list[dict]:
    """Write one series as {instance}.dcm files; returns each slice's patient-space geometry."""
    rot, shift = pose
    slope, intercept = (2.0, -100.0) if rng.random() < cfg.p_rescaled else (1.0, 0.0)
    drop_optional = rng.random() < cfg.p_missing_optional_tags
    compress = None
    if rng.random() < cfg.p_compressed:
        compress = RLELossless if rng.random() < 0.5 or min(images[0].shape) < 32 else JPEG2000Lossless
    base = series_dataset(meta, slope, intercept)
    if not drop_optional:
        base.SliceThickness = DSfloat(meta["thickness"], auto_format=True)
        base.SpacingBetweenSlices = DSfloat(meta["gap"], auto_format=True)
    encoder = None if compress is not None else SeriesEncoder(base)
    geometry_rows = []
    for instance, (image, spec) in enumerate(zip(images, specs), start=1):
        own = Dataset()  # what differs between the instances of a series
        own.SOPInstanceUID = generate_uid(entropy_srcs=[str(meta["series_id"]), str(instance)])
        own.InstanceNumber = instance
        own.ImagePositionPatient = _ds(rot @ spec.position + shift)
        own.ImageOrientationPatient = _ds(np.concatenate([rot @ spec.row_dir, rot @ spec.col_dir]))
        own.PixelSpacing = _ds(spec.spacing)
        stored = np.clip(np.round((image - intercept) / slope), 0, 65535).astype(np.uint16)
        own.Rows, own.Columns = stored.shape
        own.add_new(0x7FE00010, "OW", stored.tobytes())  # PixelData: 16-bit words, as BitsAllocated says
        if encoder is not None:
            write_bytes(encoder.file_bytes(own), directory / f"{instance}.dcm")
        else:
            ds = copy.deepcopy(base)  # compress may change shared elements
            ds.update(own)
            ds.file_meta = file_meta(own.SOPInstanceUID, ExplicitVRLittleEndian)
            ds.compress(compress, generate_instance_uid=False)  # the instance keeps its deterministic UID
            with atomic_path(directory / f"{instance}.dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        # Geometry as the reader will see it (after DS rounding), for placing the labels.
        geometry_rows.append({"instance": instance, "position": np.array([float(v) for v in own.ImagePositionPatient]),
                              "orientation": np.array([float(v) for v in own.ImageOrientationPatient]),
                              "spacing": np.array([float(v) for v in own.PixelSpacing]), "shape": stored.shape})
    return geometry_rows


def file_meta(sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    """An MR image's file meta information (pydicom adds the version and implementation tags on writing)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _element_bytes(elem: DataElement) -> bytes:
    """One element as Explicit VR Little Endian bytes."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)
    return fp.getvalue()


def _encoded(ds: Dataset) -> dict[int, bytes]:
    """Each element of ds encoded (_element_bytes), by tag."""
    return {elem.tag: _element_bytes(elem) for elem in ds}


class SeriesEncoder:
    """Uncompressed (Explicit VR Little Endian) Part 10 files of one series with the shared tags encoded once:
    the bytes pydicom's save_as(enforce_file_format=True) writes (tests/synth/test_write.py), without building
    and encoding the ~25 shared elements again for every instance (most of pydicom's work per file)."""

    def __init__(self, shared: Dataset):
        self.shared = _encoded(shared)
        meta = file_meta("1.2", ExplicitVRLittleEndian)  # the instance UID is each file's own
        validate_file_meta(meta, enforce_standard=True)  # the version and implementation tags save_as adds
        self.meta = _encoded(meta)

    def file_bytes(self, own: Dataset) -> bytes:
        """A whole file: preamble, file meta with its group length, then the shared and own elements in tag
        order (own: the instance's elements, SOPInstanceUID among them)."""
        meta = {**self.meta, _MEDIA_SOP_INSTANCE: _element_bytes(DataElement(_MEDIA_SOP_INSTANCE, "UI", own.SOPInstanceUID))}
        meta_body = b"".join(meta[tag] for tag in sorted(meta))
        group = _element_bytes(DataElement(_GROUP_LENGTH, "UL", len(meta_body)))
        body = {**self.shared, **_encoded(own)}
        return b"".join([b"\x00" * 128, b"DICM", group, meta_body, *(body[tag] for tag in sorted(body))])


_GROUP_LENGTH, _MEDIA_SOP_INSTANCE = 0x00020000, 0x00020003  # (0002,0000) and (0002,0003)


def series_dataset(meta: dict, slope: float, intercept: float) -> Dataset:
    """The tags every instance of a series shares (MR, 16-bit monochrome, rescaled when slope is not 1)."""
    base = Dataset()
    base.SOPClassUID = MRImageStorage
    base.Modality = "MR"
    base.PatientID = str(meta["study_id"])
    base.StudyInstanceUID = generate_uid(entropy_srcs=[str(meta["study_id"])])
    base.SeriesInstanceUID = generate_uid(entropy_srcs=[str(meta["series_id"])])
    base.SeriesNumber = meta["series_number"]
    base.SeriesDescription = meta["description"]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 0
    if slope != 1.0:
        base.RescaleSlope = DSfloat(slope, auto_format=True)
        base.RescaleIntercept = DSfloat(intercept, auto_format=True)
    return base
