"""DICOM writing: one series as {instance}.dcm files with the geometry a reader will see."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless, generate_uid
from pydicom.valuerep import DSfloat

from ..core.atomic import atomic_path
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
    geometry_rows = []
    for instance, (image, spec) in enumerate(zip(images, specs), start=1):
        ds = series_dataset(meta, slope, intercept)  # built anew: cheaper than a deep copy of a shared one
        sop = generate_uid(entropy_srcs=[str(meta["series_id"]), str(instance)])
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = _ds(rot @ spec.position + shift)
        ds.ImageOrientationPatient = _ds(np.concatenate([rot @ spec.row_dir, rot @ spec.col_dir]))
        ds.PixelSpacing = _ds(spec.spacing)
        if not drop_optional:
            ds.SliceThickness = DSfloat(meta["thickness"], auto_format=True)
            ds.SpacingBetweenSlices = DSfloat(meta["gap"], auto_format=True)
        stored = np.clip(np.round((image - intercept) / slope), 0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.PixelData = stored.tobytes()
        if compress is not None:
            ds.compress(compress)
        with atomic_path(directory / f"{instance}.dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        # Geometry as the reader will see it (after DS rounding), for placing the labels.
        geometry_rows.append({"instance": instance, "position": np.array([float(v) for v in ds.ImagePositionPatient]),
                              "orientation": np.array([float(v) for v in ds.ImageOrientationPatient]),
                              "spacing": np.array([float(v) for v in ds.PixelSpacing]), "shape": stored.shape})
    return geometry_rows


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
