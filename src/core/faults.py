"""Every degradation of an inference run, named once: which study, input line, member, fold or localizer
fell back, why, and how many rows it sent to the prior. Printed as one summary at the end and written
beside the submission as JSON.

Units, from smallest: a repair (a study's data was read with a problem that was repaired: a skipped
slice, a dropped repeated line; no row lost), a geometry fallback (a series' positions or spacings were
replaced: its rows are predicted, but perhaps from the wrong place), a study (a series or the whole study was lost: only its rows
are touched), the input (a file-level problem, e.g. a malformed row id), a fold of a model (the model's other folds
carry on), a member of the ensemble (the other members carry on, weights renormalised), a localizer series
type (the other series types carry on), the models as a whole (no model could be used), the ensemble file
(an entry fell back to equal weights or temperature 1) and the predictions (rows whose blended predictions
were not finite got the prior).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_json
from .constants import parse_row_id, slug


class InputError(Exception):
    """Bad input rather than a bug (a file, key or value the message names): the scripts print it as one line
    and exit 2 (core.cli.guard). Each stage's error of that kind derives from it (DataError, DicomError,
    ConfigError, MetricError)."""


# Units that mean the models were not used as trained: `infer.py --strict` exits with MODEL_DROPPED_EXIT for them.
MODEL_UNITS = ("fold", "member", "localizer", "models", "ensemble", "predictions", "geometry")
MODEL_DROPPED_EXIT = 3


@dataclass
class Fault:
    unit: str  # repair | geometry | study | input | fold | member | localizer | models | ensemble | predictions | output
    name: str  # what it touches, e.g. 'study 4003253', 'attn_resnext fold 1', 'localizer axial'
    reason: str
    rows: int = 0  # rows of the submission it sent to the prior (counted at the end)
    study_id: int | None = None  # the study it touches, if one
    conditions: tuple[str, ...] = ()  # the conditions it touches, if some (all when empty)


@dataclass
class FaultLog:
    """Collects faults as they happen, then summarises them: each is printed once, in the summary."""

    faults: list[Fault] = field(default_factory=list)

    def add(self, unit: str, name: str, reason: str, study_id: int | None = None,
            conditions: tuple[str, ...] = (), rows: int = 0) -> Fault:
        fault = Fault(unit, name, reason, rows, study_id, tuple(conditions))
        self.faults.append(fault)
        return fault

    def of(self, *units: str) -> list[Fault]:
        return [f for f in self.faults if f.unit in units]

    @property
    def model_dropped(self) -> bool:
        """Whether any fold, member or localizer was dropped, an ensemble entry fell back, some predictions were
        invalid, or no model was used at all."""
        return bool(self.of(*MODEL_UNITS))

    def summary(self) -> str:
        """One line per fault, grouped by unit; 'no degradation' when there is none."""
        if not self.faults:
            return "no degradation: every model was used and every study read"
        lines = [f"{len(self.faults)} degradation(s):"]
        lines += [f"  [{f.unit}] {f.name}: {f.reason}" + (f" ({f.rows} rows got the prior)" if f.rows else "")
                  for f in self.faults]
        return "\n".join(lines)

    def count_rows(self, row_ids: list[str], fell_back: set[str]) -> None:
        """Set each fault's rows: the rows of its study and conditions (all for a model-wide fault, none for a
        fold or member that others covered) that got the prior."""
        parsed = {r: parse_row_id(r) for r in row_ids if r in fell_back}
        for f in self.faults:
            if f.unit in ("repair", "fold", "member", "output", "ensemble", "predictions", "geometry") or (
                    f.unit == "input" and f.study_id is None):
                continue  # covered by the others, or counted where it was found
            f.rows = sum(1 for study, column in parsed.values()
                         if (f.study_id is None or study == f.study_id)
                         and (not f.conditions or any(column.startswith(slug(c)) for c in f.conditions)))

    def write(self, path: Path) -> None:
        write_json({"model_dropped": self.model_dropped, "faults": [asdict(f) for f in self.faults]}, path)
