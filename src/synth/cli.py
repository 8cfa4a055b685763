"""Synthetic RSNA-format lumbar MRI dataset with planted graded pathology and a known optimum.

`python -m src.synth --out input/synth --studies 200 --test-studies 40 --seed 0`

Each study is a small anatomical model (vertebrae, discs, spinal canal, neural foramina, lateral recesses)
rasterised with soft edges into a 1 mm voxel grid in a study-local frame (x: patient left, y: posterior,
z: head), then resampled into real DICOM series (Sagittal T1, Sagittal T2/STIR, one or more Axial T2)
with patient-specific tilt, position, field of view, pixel spacing, slice count and intensity.

Every (condition, level) has a latent severity s in [0, 1] that sets how much the structure is narrowed.
The written label is drawn from p(label | s), an ordinal logistic model (readers disagree near the
thresholds), so no model can score 0. {split}_oracle.csv holds the Bayes-optimal submission: p(label | s)
reweighted by the metric's class weights 1/2/4 (the minimiser of the expected weighted log loss). The joint
label pattern of each study is copied from a row of the real train.csv when one is given (--patterns).

`--variety real` turns on the acquisition variety of real lumbar MRI (see VARIETIES): the anatomy beyond
L1-S1 that wide fields of view show (T11, T12 and the sacrum), instance numbers against slice position in
both sagittal and axial series, rectangular matrices and fields of view, anisotropic pixels, a wide range of
matrix sizes, slice counts and thicknesses, scanner contrast, gamma, bias field and noise, STIR fat
suppression, several sagittal series, and missing series and coordinates at the real rates. The default
(`--variety default`) is the embedded benchmark, unchanged.
"""
from __future__ import annotations

from pathlib import Path

from .config import VARIETIES, SynthConfig
from .dataset import generate


def main(argv: list[str] | None = None) -> int:
    from ..core import cli  # the scripts' parser style: defaults shown, --debug, one-line errors

    ap = cli.parser(__doc__, prog="python -m src.synth")
    d = SynthConfig()
    ap.add_argument("--out", type=Path, default=d.out, help="the dataset folder to write (competition format)")
    ap.add_argument("--studies", type=int, default=d.studies, help="training studies")
    ap.add_argument("--test-studies", type=int, default=d.test_studies,
                    help="test studies (their answers in test_solution.csv and test_oracle.csv)")
    ap.add_argument("--seed", type=int, default=d.seed, help="one seed for the labels, anatomy and images")
    ap.add_argument("--image-size", type=int, default=d.image_size, help="base image rows/columns")
    ap.add_argument("--voxel-mm", type=float, default=d.voxel_mm, help="resolution of the rendered anatomy")
    ap.add_argument("--sag-slices", type=int, nargs=2, default=d.sag_slices, metavar=("MIN", "MAX"),
                    help="slices per sagittal series, drawn in this range")
    ap.add_argument("--axial-per-level", type=int, nargs=2, default=d.axial_per_level, metavar=("MIN", "MAX"),
                    help="axial slices per disc level, drawn in this range")
    ap.add_argument("--reader-noise", type=float, default=d.reader_noise, help="label noise near the thresholds")
    ap.add_argument("--patterns", type=Path, default=d.patterns, help="a real train.csv to copy label patterns from")
    ap.add_argument("--p-compressed", type=float, default=d.p_compressed,
                    help="share of series written compressed (RLE or JPEG 2000 lossless; the rest uncompressed)")
    ap.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    ap.add_argument("--variety", choices=sorted(VARIETIES), default=d.variety,
                    help="acquisition variety: 'default' is the embedded benchmark, 'real' the variety of real MRI")
    a = ap.parse_args(argv)
    cfg = SynthConfig(
        out=a.out, studies=a.studies, test_studies=a.test_studies, seed=a.seed, image_size=a.image_size,
        voxel_mm=a.voxel_mm, sag_slices=tuple(a.sag_slices), axial_per_level=tuple(a.axial_per_level),
        reader_noise=a.reader_noise, patterns=a.patterns, p_compressed=a.p_compressed, workers=a.workers,
        variety=a.variety,
    )
    paths = generate(cfg)
    print(f"wrote {cfg.studies} train and {cfg.test_studies} test studies to {cfg.out}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


if __name__ == "__main__":
    main()
