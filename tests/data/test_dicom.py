import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless, generate_uid

from src.data.dicom import DicomError, DicomWarning, normalize_intensity, read_series

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def write_slice(path, value, z, instance, shape=(40, 40), orientation=AXIAL, spacing=(0.8, 0.8), position=None,
                optional=True, compress=None, slope=None, marker=None):
    """One MR slice filled with `value` (plus an optional bright marker pixel)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.InstanceNumber = instance
    o = np.asarray(orientation, float)
    normal = np.cross(o[:3], o[3:])
    ds.ImagePositionPatient = list(position if position is not None else z * normal)
    ds.ImageOrientationPatient = list(o)
    ds.PixelSpacing = list(spacing)
    if optional:
        ds.SliceThickness, ds.SpacingBetweenSlices = 3.0, 3.0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, -10
    img = np.full(shape, value, dtype=np.uint16)
    if marker is not None:
        img[marker[1], marker[0]] = 4000
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = img.tobytes()
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)


def test_order_by_position_not_name_or_instance(tmp_path):
    rng = np.random.default_rng(1)
    n = 9
    z = np.arange(n) * 3.5  # true order along the normal
    instances = rng.permutation(np.arange(1, n + 1))
    names = rng.permutation(n)
    for k in rng.permutation(n):
        write_slice(tmp_path / f"{names[k]:03d}.dcm", value=100 + 10 * k, z=z[k], instance=int(instances[k]))
    s = read_series(tmp_path, normalize=False)
    assert np.allclose(s.volume[:, 0, 0], 100 + 10 * np.arange(n))
    assert s.instance_numbers.tolist() == instances.tolist()  # each image keeps its own InstanceNumber
    assert np.allclose(s.positions[:, 2], z)
    assert s.index_of_instance(instances[4]) == 4
    assert s.slice_gap == pytest.approx(3.5) and s.thickness == pytest.approx(3.0)


def test_rescale_and_normalize(tmp_path):
    for k in range(3):
        write_slice(tmp_path / f"{k}.dcm", value=50 * (k + 1), z=k, instance=k + 1, slope=2.0)
    raw = read_series(tmp_path, normalize=False)
    assert np.allclose(raw.volume[:, 0, 0], [90, 190, 290])  # 2 * stored - 10
    norm = read_series(tmp_path)
    assert norm.volume.min() == 0.0 and norm.volume.max() == 1.0 and norm.volume.dtype == np.float32
    assert np.allclose(normalize_intensity(np.full((2, 2), 7.0)), 0)


@pytest.mark.filterwarnings("ignore")
def test_a_monochrome1_twin_reads_as_the_same_volume(synth_dir, tmp_path):
    """A generated Sagittal T2 series re-saved with its stored pixels inverted and MONOCHROME1 set (white is
    low) decodes to the original volume, before and after normalisation."""
    from src.data.tables import load_series_descriptions

    table = load_series_descriptions(synth_dir / "train_series_descriptions.csv")
    row = table[table["series_description"] == "Sagittal T2/STIR"].iloc[0]
    src = synth_dir / "train_images" / str(row.study_id) / str(row.series_id)

    def invert(ds, i):
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        top = 2 ** int(ds.BitsStored) - 1
        ds.PixelData = (top - ds.pixel_array.astype(np.int64)).astype(ds.pixel_array.dtype).tobytes()
        ds.PhotometricInterpretation = "MONOCHROME1"
        return f"{i}.dcm"

    _copy_series(src, tmp_path / "twin", invert)
    for normalize in (False, True):
        original, twin = read_series(src, normalize=normalize), read_series(tmp_path / "twin", normalize=normalize)
        assert np.array_equal(original.volume, twin.volume) and np.allclose(original.positions, twin.positions)
    assert not np.array_equal(read_series(src).volume, 1 - read_series(src).volume)  # the test can tell them apart


def test_corrupt_truncated_and_missing_optional_tags(tmp_path):
    for k in range(4):
        write_slice(tmp_path / f"{k}.dcm", value=100 + k, z=k * 4.0, instance=k + 1, optional=False)
    data = (tmp_path / "3.dcm").read_bytes()
    (tmp_path / "3.dcm").write_bytes(data[: len(data) // 2])  # truncated pixel data
    (tmp_path / "9.dcm").write_bytes(b"not a dicom file at all")
    with pytest.warns(DicomWarning, match="skipped unreadable slice") as record:
        s = read_series(tmp_path, normalize=False)
    assert len(s) == 3 and s.thickness is None
    assert {str(tmp_path / "3.dcm"), str(tmp_path / "9.dcm")} <= {m.split(":")[0] for m in s.warnings}
    assert len(record) >= 2


def test_nothing_readable_raises_with_path(tmp_path):
    with pytest.raises(DicomError, match="no .dcm files"):
        read_series(tmp_path)
    (tmp_path / "1.dcm").write_bytes(b"garbage")
    with pytest.warns(DicomWarning), pytest.raises(DicomError, match=str(tmp_path)):
        read_series(tmp_path)


def test_mixed_shapes_resized_with_geometry_kept(tmp_path):
    write_slice(tmp_path / "1.dcm", 100, 0.0, 1, shape=(40, 40), spacing=(0.8, 0.8))
    write_slice(tmp_path / "2.dcm", 100, 4.0, 2, shape=(40, 40), spacing=(0.8, 0.8))
    # Same field of view at twice the matrix, with a marker pixel whose patient position we know.
    write_slice(tmp_path / "3.dcm", 100, 8.0, 3, shape=(80, 80), spacing=(0.4, 0.4), marker=(30, 50))
    marker_mm = np.array([30 * 0.4, 50 * 0.4, 8.0])
    with pytest.warns(DicomWarning, match="resized"):
        s = read_series(tmp_path, normalize=False)
    assert s.volume.shape == (3, 40, 40)
    i = s.index_of_instance(3)
    x, y, d = s.patient_to_pixel(i, marker_mm)
    peak = np.unravel_index(np.argmax(s.volume[i]), s.shape)
    assert abs(d) < 1e-6 and abs(peak[0] - y) <= 0.6 and abs(peak[1] - x) <= 0.6
    assert np.allclose(s.spacings[i], [0.8, 0.8])


def test_several_orientation_groups(tmp_path):
    tilt = np.deg2rad(10)
    tilted = [1.0, 0.0, 0.0, 0.0, np.cos(tilt), np.sin(tilt)]
    for k, z in enumerate([0.0, 3.0, 40.0, 43.0]):
        orientation = AXIAL if k < 2 else tilted
        write_slice(tmp_path / f"{k}.dcm", 10 * (k + 1), 0, k + 1, orientation=orientation, position=[0, 0, z])
    with pytest.warns(DicomWarning, match="2 orientation groups"):
        s = read_series(tmp_path, normalize=False)
    assert s.n_orientation_groups == 2
    assert np.allclose(s.volume[:, 0, 0], [10, 20, 30, 40])


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes(tmp_path, syntax):
    for k in range(2):
        write_slice(tmp_path / f"{k}.dcm", 300 + k, k * 3.0, k + 1, shape=(48, 48), compress=syntax, marker=(5, 7))
    assert pydicom.dcmread(tmp_path / "0.dcm").file_meta.TransferSyntaxUID == syntax
    s = read_series(tmp_path, normalize=False)
    assert np.allclose(s.volume[:, 0, 0], [300, 301]) and s.volume[0, 7, 5] == 4000


def _copy_series(src, dst, edit) -> None:
    """Copy a series' files to dst, each through edit(dataset, position in the sorted file list)."""
    dst.mkdir(parents=True)
    for i, f in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        name = edit(ds, i)
        ds.save_as(dst / name, enforce_file_format=True)


@pytest.mark.filterwarnings("ignore")
def test_geometry_comes_from_the_tags_not_file_or_instance_order(variety_dir, tmp_path):
    """Generated series re-saved under shuffled file names with InstanceNumber reversed read back in the
    same order along the normal, with the same positions and intensities."""
    from src.data.tables import load_series_descriptions

    table = load_series_descriptions(variety_dir / "train_series_descriptions.csv")
    rng = np.random.default_rng(0)
    for r in table.head(6).itertuples():
        src = variety_dir / "train_images" / str(r.study_id) / str(r.series_id)
        n = len(list(src.glob("*.dcm")))
        names = rng.permutation(n)

        def edit(ds, i, n=n, names=names):
            ds.InstanceNumber = n + 1 - int(ds.InstanceNumber)
            return f"{names[i]:04d}.dcm"

        _copy_series(src, tmp_path / str(r.series_id), edit)
        a, b = read_series(src), read_series(tmp_path / str(r.series_id))
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.volume, b.volume)
        assert np.array_equal(b.instance_numbers, n + 1 - a.instance_numbers)


@pytest.mark.filterwarnings("ignore")
def test_intensity_normalisation_is_per_series(variety_dir, tmp_path):
    """A series stored with 10x the values (another scanner's gain) normalises to the same volume, whatever
    the other series of its study hold."""
    from src.data.tables import load_series_descriptions

    table = load_series_descriptions(variety_dir / "train_series_descriptions.csv")
    r = table.iloc[0]
    src = variety_dir / "train_images" / str(r.study_id) / str(r.series_id)

    def brighter(ds, i):
        ds.RescaleSlope = float(ds.get("RescaleSlope", 1.0)) * 10
        ds.RescaleIntercept = float(ds.get("RescaleIntercept", 0.0)) * 10
        return f"{ds.InstanceNumber}.dcm"

    _copy_series(src, tmp_path / "bright", brighter)
    a, b = read_series(src), read_series(tmp_path / "bright")
    assert read_series(src, normalize=False).volume.max() * 9 < read_series(tmp_path / "bright", normalize=False).volume.max()
    assert np.allclose(a.volume, b.volume, atol=1e-5)
