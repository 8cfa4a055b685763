"""The synthetic RSNA-format dataset (`python -m src.synth`): config, label model, anatomy, rendering, DICOM
writing, one study, the whole dataset, and the command line (cli.py, whose docstring describes the generator)."""
from .config import VARIETIES, SynthConfig, Variety
from .dataset import generate

__all__ = ["VARIETIES", "SynthConfig", "Variety", "generate"]
