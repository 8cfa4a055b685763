import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from src.synth.config import SynthConfig
from src.synth.render import SliceSpec
from src.synth.write import SeriesEncoder, file_meta, series_dataset, write_series

META = dict(study_id=7, series_id=70, series_number=2, description="Sagittal T2/STIR", thickness=3.5, gap=4.0)


def _own(instance: int, image: np.ndarray) -> Dataset:
    own = Dataset()
    own.SOPInstanceUID = f"1.2.3.{instance}"
    own.InstanceNumber = instance
    own.ImagePositionPatient = [1.25, -3.5, 10.0 * instance]
    own.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    own.PixelSpacing = [0.75, 0.8]
    own.Rows, own.Columns = image.shape
    own.add_new(0x7FE00010, "OW", image.tobytes())
    return own


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_series_encoder_writes_what_pydicom_writes(slope):
    """The shared tags encoded once give the bytes of pydicom's own save_as, file meta and group length included."""
    base = series_dataset(META, slope, -100.0 if slope != 1.0 else 0.0)
    encoder = SeriesEncoder(base)
    for instance in (1, 12):
        image = np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * instance
        own = _own(instance, image)
        ds = Dataset()
        ds.update(base)
        ds.update(own)
        ds.file_meta = file_meta(own.SOPInstanceUID, ExplicitVRLittleEndian)
        expected = io.BytesIO()
        ds.save_as(expected, enforce_file_format=True)
        assert encoder.file_bytes(own) == expected.getvalue()
        back = pydicom.dcmread(io.BytesIO(encoder.file_bytes(own)))
        assert back.file_meta.MediaStorageSOPInstanceUID == own.SOPInstanceUID
        assert (back.pixel_array == image).all() and back.SeriesDescription == META["description"]


@pytest.mark.parametrize("p_compressed", [0.0, 1.0])
def test_write_series_is_reproducible(tmp_path, p_compressed):
    """The same draws write the same bytes, compressed series too (their instance UIDs are not redrawn)."""
    cfg = SynthConfig(out=tmp_path, p_compressed=p_compressed)
    specs = [SliceSpec(np.array([0.0, 0.0, 4.0 * k]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.8, 0.8), 16, 16)
             for k in range(3)]
    images = [np.full((16, 16), 100.0 + k) for k in range(3)]
    pose = (np.eye(3), np.zeros(3))
    written = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        rows = write_series(tmp_path / run, images, specs, pose, META, np.random.default_rng(1), cfg)
        written.append([(tmp_path / run / f"{r['instance']}.dcm").read_bytes() for r in rows])
    assert written[0] == written[1] and len(written[0]) == 3
    ds = pydicom.dcmread(tmp_path / "a" / "2.dcm")
    assert ds.file_meta.TransferSyntaxUID.is_compressed == bool(p_compressed)
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert int(ds.InstanceNumber) == 2 and float(ds.ImagePositionPatient[2]) == 4.0 and (ds.pixel_array == 101).all()
