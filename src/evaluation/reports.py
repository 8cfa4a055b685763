"""Out-of-fold evaluation: the competition score (per model, level and fold), the two papers' metrics and plots,
calibration (reliability diagrams before and after the fitted temperatures), prior and oracle, and the
localization error histograms of evaluate_localization.py's per-point errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    average_precision_score,
    classification_report,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from ..core.atomic import write_json, write_text
from ..core.constants import CONDITIONS, GROUPS, SEVERITIES, TARGETS, group_of, level_of, row_study_ids
from ..core.metric import expected_score_parts, fold_prior, prior_submission, row_folds, score, score_parts, solution_frame
from ..core.run_folders import LOG, OOF_PREDICTED, ensemble_file, trained_folds
from ..data.tables import DataError, load_label_probabilities, load_solution, load_submission, load_train
from ..inference import ensemble as ensemble_lib
from ..inference.final_stage import apply_stage
from .figures import figure, save_figure

# The attention paper's own results (lumbar disc herniation, its private data): a reference, not a target.
PAPER = {"acc": 0.9486, "auc": 0.969, "f1": 0.938, "precision": 0.935, "recall": 0.9412, "auprc": 0.981}


def paper_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, float]]:
    """ACC, AUC, F1, precision, recall, AUPRC: 3-class (macro, one-vs-rest) and 'moderate or severe' binary."""
    pred = probs.argmax(1)
    out = {"three_class": {
        "acc": accuracy_score(labels, pred),
        "f1": f1_score(labels, pred, average="macro", labels=[0, 1, 2], zero_division=0),
        "precision": precision_score(labels, pred, average="macro", labels=[0, 1, 2], zero_division=0),
        "recall": recall_score(labels, pred, average="macro", labels=[0, 1, 2], zero_division=0),
    }}
    present = [k for k in range(3) if 0 < (labels == k).sum() < len(labels)]
    onehot = np.eye(3)[labels]
    for key, fn in (("auc", roc_auc_score), ("auprc", average_precision_score)):
        out["three_class"][key] = float(np.mean([fn(onehot[:, k], probs[:, k]) for k in present])) if present else np.nan
    y = (labels > 0).astype(int)
    p = probs[:, 1:].sum(1)
    both = 0 < y.sum() < len(y)
    out["binary"] = {
        "acc": accuracy_score(y, p >= 0.5), "f1": f1_score(y, p >= 0.5, zero_division=0),
        "precision": precision_score(y, p >= 0.5, zero_division=0), "recall": recall_score(y, p >= 0.5, zero_division=0),
        "auc": roc_auc_score(y, p) if both else np.nan, "auprc": average_precision_score(y, p) if both else np.nan,
    }
    return {k: {m: float(v) for m, v in d.items()} for k, d in out.items()}


def _aligned(solution: pd.DataFrame, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sub = frame.set_index("row_id").loc[solution["row_id"], list(TARGETS)].to_numpy()
    labels = solution[list(TARGETS)].to_numpy().argmax(1)
    groups = solution["row_id"].map(group_of).to_numpy()
    return labels, sub / sub.sum(1, keepdims=True), groups


def plot_confusion(name: str, labels, probs, groups, path: Path) -> None:
    fig, axes = figure(1, len(GROUPS), figsize=(4.2 * len(GROUPS), 4))
    for ax, g in zip(axes, GROUPS):
        m = groups == g
        ConfusionMatrixDisplay.from_predictions(labels[m], probs[m].argmax(1), labels=[0, 1, 2],
                                                display_labels=["N/M", "Mod", "Sev"], ax=ax, colorbar=False, cmap="Blues")
        ax.set_title(f"{g}")
    fig.suptitle(f"{name}: confusion matrices (out of fold)")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_roc_pr(curves: dict[str, tuple], path: Path) -> None:
    """ROC and precision-recall of 'moderate or severe' per group, one line per model."""
    fig, axes = figure(2, len(GROUPS), figsize=(4.2 * len(GROUPS), 8))
    for j, g in enumerate(GROUPS):
        for name, (labels, probs, groups) in curves.items():
            m = groups == g
            y, p = (labels[m] > 0).astype(int), probs[m, 1:].sum(1)
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = roc_curve(y, p)
                prec, rec, _ = precision_recall_curve(y, p)
                axes[0, j].plot(fpr, tpr, label=f"{name} AUC {roc_auc_score(y, p):.3f}")
                axes[1, j].plot(rec, prec, label=f"{name} AP {average_precision_score(y, p):.3f}")
        axes[0, j].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[0, j].set(title=f"{g}: ROC", xlabel="false positive rate", ylabel="true positive rate")
        axes[1, j].set(title=f"{g}: precision-recall", xlabel="recall", ylabel="precision")
        for ax in axes[:, j]:
            ax.legend(fontsize=7)
    fig.suptitle("moderate or severe vs normal/mild (out of fold)")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_curves(name: str, logs: list[tuple[str, pd.DataFrame]], path: Path, prior: float | None = None) -> None:
    """Per epoch and fold: training and validation loss, the validation competition score (with the prior's
    for reference) and accuracy (the CNN-LSTM paper's curves)."""
    fig, (a, c, b) = figure(1, 3, figsize=(15, 4))
    for fold, log in logs:
        a.plot(log["epoch"], log["train_loss"], "-", label=f"{fold} train")
        a.plot(log["epoch"], log["val_loss"], "--", label=f"{fold} val")
        c.plot(log["epoch"], log["score"], "-o", ms=3, label=f"{fold} val score")
        b.plot(log["epoch"], log["acc"], "-", label=f"{fold} val accuracy")
    if prior is not None:
        c.axhline(prior, color="k", ls=":", lw=1, label=f"prior {prior:.3f}")
    a.set(title=f"{name}: loss", xlabel="epoch", ylabel="weighted cross-entropy")
    c.set(title=f"{name}: competition score (lower is better)", xlabel="epoch", ylabel="weighted log loss")
    b.set(title=f"{name}: validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (a, b, c):
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> tuple[list, float]:
    """Per severity: (mean predicted, observed frequency) per bin (sklearn's calibration_curve), and the
    expected calibration error over the three classes (bin-size weighted |observed - predicted|)."""
    curves, errors = [], []
    for k in range(3):
        y, p = (labels == k).astype(int), probs[:, k]
        if 0 < y.sum() < len(y):
            observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
            curves.append((k, predicted, observed))
            edges = np.quantile(p, np.linspace(0, 1, bins + 1))
            which = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, bins - 1)
            errors.append(sum(abs(y[which == b].mean() - p[which == b].mean()) * (which == b).mean()
                              for b in range(bins) if (which == b).any()))
    return curves, float(np.mean(errors)) if errors else float("nan")


def plot_reliability(name: str, labels, before, after, groups, path: Path) -> dict[str, dict[str, float]]:
    """Reliability diagram per condition group: predicted against observed frequency of each severity, before
    (dashed) and after (solid) the fitted temperatures; returns the expected calibration error of each."""
    fig, axes = figure(1, len(GROUPS), figsize=(4.2 * len(GROUPS), 4.2))
    ece: dict[str, dict[str, float]] = {}
    colors = ("tab:green", "tab:orange", "tab:red")
    for ax, g in zip(axes, GROUPS):
        m = groups == g
        ece[g] = {}
        for when, probs, style in (("before", before, "--"), ("after", after, "-")):
            curves, ece[g][when] = calibration(labels[m], probs[m])
            for k, predicted, observed in curves:
                ax.plot(predicted, observed, style, marker="o", ms=3, color=colors[k],
                        label=f"{SEVERITIES[k]} {when}" if when == "after" or k == 0 else None)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=f"{g}: ECE {ece[g]['before']:.3f} -> {ece[g]['after']:.3f}", xlabel="predicted probability",
               ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: reliability, before (dashed) and after (solid) the fitted temperatures (out of fold)")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    return ece


def score_by(solution: pd.DataFrame, frames: dict[str, pd.DataFrame], key: pd.Series) -> dict[str, dict[str, float]]:
    """The competition score of each model on the rows of each value of `key` (a level, a fold): {value: {model:
    score}}; NaN where a subset cannot be scored."""
    out: dict[str, dict[str, float]] = {}
    for value in sorted(key.dropna().unique(), key=str):
        part = solution[(key == value).to_numpy()].reset_index(drop=True)
        out[str(value)] = {}
        for name, frame in frames.items():
            try:
                out[str(value)][name] = score_parts(part, frame)["score"]
            except (ValueError, KeyError):
                out[str(value)][name] = float("nan")
    return out


def plot_localization_errors(errors: pd.DataFrame, title: str, path: Path, cap_mm: float = 30.0) -> None:
    """Histogram of in-plane error (mm) per condition; points past cap_mm (a level off) pile up in the last bin."""
    fig, axes = figure(1, len(CONDITIONS), figsize=(3.6 * len(CONDITIONS), 3.4), sharey=True)
    for ax, condition in zip(axes, CONDITIONS):
        e = errors.loc[errors["condition"] == condition, "error_mm"].dropna().clip(upper=cap_mm)
        ax.hist(e, bins=np.linspace(0, cap_mm, 31), color="tab:blue")
        ax.axvline(5.0, color="k", ls=":", lw=1)
        within = float((e <= 5).mean()) if len(e) else float("nan")
        ax.set(title=f"{condition}\n{len(e)} points, {100 * within:.1f}% within 5 mm", xlabel=f"error (mm, capped at {cap_mm:g})")
        ax.title.set_fontsize(8)
    axes[0].set_ylabel("points")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


# evaluate_localization.py's per-point errors, beside its JSON in the reports folder.
LOCALIZATION_ERRORS = {"localization_errors.csv": "held-out folds", "localization_test_errors.csv": "test split"}


def evaluate(runs: Path, train: pd.DataFrame, folds: pd.DataFrame, out_dir: Path, oracle: pd.DataFrame | None = None,
             held_out: pd.DataFrame | None = None) -> dict:
    """Write metrics.json, report.md and the PNGs for every classifier (and the ensemble) under runs/;
    held_out (held_out_table) adds the scores on a held-out split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = ensemble_lib.collect_oof(runs)
    if not frames:
        raise DataError(f"{runs}: no oof.csv of a trained classifier: train some folds first")
    solution = solution_frame(train)
    solution = solution[solution["row_id"].isin(ensemble_lib.common_rows(frames))].reset_index(drop=True)
    fitted = ensemble_lib.load(ensemble_file(runs) if ensemble_file(runs).is_file() else None)
    predicted = _predicted_points(runs, solution, list(frames), fitted)
    if len(frames) > 1:
        frames = {**frames, "ensemble": apply_stage(fitted, frames)}
    prior = fold_prior(train, folds, solution)
    rows = {"prior": score_parts(solution, prior)}
    rows.update({n: score_parts(solution, f) for n, f in frames.items()})
    if oracle is not None:
        rows["oracle"] = score_parts(solution, oracle)
    metrics: dict = {"rows": len(solution), "studies": len(set(row_study_ids(solution["row_id"]).tolist())),
                     "scores": rows, "paper": {}, "paper_reference": PAPER}
    if "oracle" in rows:
        span = rows["prior"]["score"] - rows["oracle"]["score"]
        metrics["signal_captured"] = {n: (rows["prior"]["score"] - rows[n]["score"]) / span for n in frames}
    scored = {**frames, "prior": prior}
    metrics["by_level"] = score_by(solution, scored, solution["row_id"].map(level_of))
    metrics["by_fold"] = score_by(solution, scored, row_folds(solution, folds).map(
        lambda f: f"fold {int(f)}" if f == f else None))
    curves, reports = {}, {}
    for name, frame in frames.items():
        labels, probs, groups = _aligned(solution, frame)
        curves[name] = (labels, probs, groups)
        metrics["paper"][name] = {g: paper_metrics(labels[groups == g], probs[groups == g]) for g in GROUPS}
        metrics["paper"][name]["all"] = paper_metrics(labels, probs)
        reports[name] = {g: classification_report(labels[groups == g], probs[groups == g].argmax(1), labels=[0, 1, 2],
                                                  target_names=list(SEVERITIES), zero_division=0, digits=3) for g in GROUPS}
        plot_confusion(name, labels, probs, groups, out_dir / f"confusion_{name}.png")
        logs = [(d.name, pd.read_csv(d / LOG)) for d in trained_folds(runs, name) if (d / LOG).is_file()]
        if logs:
            plot_curves(name, logs, out_dir / f"curves_{name}.png", rows["prior"]["score"])
    plot_roc_pr(curves, out_dir / "roc_pr.png")
    metrics["calibration"] = _reliability(solution, frames, fitted, out_dir)
    for file, what in LOCALIZATION_ERRORS.items():
        if (out_dir / file).is_file():
            plot_localization_errors(pd.read_csv(out_dir / file), f"localization error, {what}",
                                     out_dir / file.replace(".csv", ".png"))
    if predicted:
        metrics["predicted_points"] = {n: score(solution, f) for n, f in predicted.items()}
    if fitted.get("final_stage"):
        metrics["final_stage"] = fitted["final_stage"]
    if held_out is not None:
        metrics["test"] = held_out.to_dict("records")
    write_json(metrics, out_dir / "metrics.json")
    write_text(render(metrics, reports, sorted(p.name for p in out_dir.glob("*.png"))), out_dir / "report.md")
    return metrics


def _predicted_points(runs: Path, solution: pd.DataFrame, members: list[str], fitted: dict) -> dict[str, pd.DataFrame]:
    """Each member's (and the final stage's) out-of-fold predictions from crops at its fold's predicted points
    (oof_predicted.csv), on the solution's rows; {} unless every member has them for every one of those rows."""
    predicted = ensemble_lib.collect_oof(runs, members, OOF_PREDICTED)
    if set(predicted) != set(members) or not all(solution["row_id"].isin(f["row_id"]).all() for f in predicted.values()):
        return {}
    return {**predicted, "ensemble": apply_stage(fitted, predicted)} if len(predicted) > 1 else predicted


def _reliability(solution: pd.DataFrame, frames: dict[str, pd.DataFrame], fitted: dict, out_dir: Path) -> dict:
    """The reliability diagram of the ensemble (else the one model): its probabilities before and after the
    fitted temperatures of ensemble.json."""
    members = {n: f for n, f in frames.items() if n != "ensemble"}
    name = "ensemble" if "ensemble" in frames else next(iter(members))
    weights = ensemble_lib.member_weights(fitted, list(members))
    before = ensemble_lib.blend(members, weights, {})
    # The ensemble's own frame already has the temperatures; one model gets them here.
    after = frames.get("ensemble")
    if after is None:
        after = ensemble_lib.blend(members, weights, fitted.get("temperature", {}))
    labels, p_before, groups = _aligned(solution, before)
    _, p_after, _ = _aligned(solution, after)
    ece = plot_reliability(name, labels, p_before, p_after, groups, out_dir / "reliability.png")
    return {"model": name, "temperature": fitted.get("temperature", {}), "ece": ece}


def _final_stage_lines(metrics: dict) -> list[str]:
    """report.md's lines on what test time sees: each model at the labelled and at the predicted points, and the
    final stage ensemble.py chose."""
    lines = []
    if metrics.get("predicted_points"):
        lines += ["", "## Labelled against predicted points", "",
                  "The same rows, with each fold's crops cut at the labelled points (its oof.csv) and at the points "
                  "its localizers predict, with the flip TTA (oof_predicted.csv: what test time sees).", "",
                  "| submission | labelled points | predicted points |", "| --- | --- | --- |"]
        lines += [f"| {n} | {metrics['scores'][n]['score']:.4f} | {s:.4f} |" for n, s in metrics["predicted_points"].items()]
    final = metrics.get("final_stage")
    if final:
        nested = ", ".join(f"{k} {v:.4f}" for k, v in final["scores"].items())
        lines += ["", f"Final stage ({final.get('source', 'oof.csv')}): {final['chosen']}, asked {final['asked']}: "
                  f"{final['why']}. Nested {final['folds']}-fold scores over {final['studies']} studies: {nested}."]
    return lines


def render(metrics: dict, reports: dict, pictures: list[str]) -> str:
    """report.md from the metrics."""
    lines = ["# Out-of-fold evaluation", "",
             f"{metrics['studies']} studies, {metrics['rows']} scored rows (every fold with predictions from every model).", "",
             "## Competition score (lower is better)", "",
             "| submission | score | spinal | foraminal | subarticular | any severe spinal |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, p in metrics["scores"].items():
        parts = " | ".join(f"{p[k]:.4f}" for k in ("score", "spinal", "foraminal", "subarticular", "any_severe_spinal"))
        lines.append(f"| {name} | {parts} |")
    if "ensemble" in metrics["scores"]:
        lines += ["", "The ensemble's final stage was fitted on these studies' out-of-fold predictions, so its row is "
                  "optimistic; the nested scores below and a held-out test split score it honestly."]
    lines += _final_stage_lines(metrics)
    if "signal_captured" in metrics:
        lines += ["", "Share of the learnable signal captured, (prior - model) / (prior - oracle): "
                  + ", ".join(f"{n} {100 * v:.1f}%" for n, v in metrics["signal_captured"].items()) + "."]
    for title, key in (("Score per level", "by_level"), ("Score per fold", "by_fold")):
        table = metrics.get(key) or {}
        names = list(next(iter(table.values()), {}))
        lines += ["", f"## {title}", "", "| | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
        lines += [f"| {value} | " + " | ".join(f"{s:.4f}" for s in scores.values()) + " |" for value, scores in table.items()]
    if "calibration" in metrics:
        cal = metrics["calibration"]
        temps = ", ".join(f"{g} {t:.2f}" for g, t in cal["temperature"].items()) or "none fitted"
        lines += ["", "## Calibration", "", f"{cal['model']}, temperatures: {temps}. Expected calibration error "
                  "(quantile bins, mean over the three severities) before -> after the temperatures: "
                  + ", ".join(f"{g} {e['before']:.3f} -> {e['after']:.3f}" for g, e in cal["ece"].items())
                  + ". ![reliability](reliability.png)"]
    lines += ["", "## The attention paper's metrics", "",
              "Per condition group; `3-class` is macro-averaged (AUC and AUPRC one-vs-rest), `binary` is moderate or "
              "severe against normal/mild at p >= 0.5. The paper's own numbers (ACC 0.9486, AUC 0.969, F1 0.938, "
              "precision 0.935, recall 0.9412, AUPRC 0.981) are on a different dataset and task (lumbar disc "
              "herniation, its private data) and are shown for reference only.", "",
              "| model | group | view | ACC | AUC | F1 | precision | recall | AUPRC |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, by_group in metrics["paper"].items():
        for g, views in by_group.items():
            for view, m in views.items():
                lines.append(f"| {name} | {g} | {view.replace('three_class', '3-class')} | {m['acc']:.3f} | {m['auc']:.3f} | "
                             f"{m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['auprc']:.3f} |")
    ref = metrics["paper_reference"]
    lines.append("| paper (herniation, other data) | - | binary | "
                 + " | ".join(str(ref[k]) for k in ("acc", "auc", "f1", "precision", "recall", "auprc")) + " |")
    lines += ["", "## The CNN-LSTM paper's outputs: classification reports", ""]
    for name, by_group in reports.items():
        for g, text in by_group.items():
            lines += [f"### {name}, {g}", "", "```", text.rstrip(), "```", ""]
    lines += ["## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    if "test" in metrics:
        lines += ["", *held_out_lines(metrics["test"])]
    return "\n".join(lines) + "\n"


def held_out_lines(rows: list[dict]) -> list[str]:
    """The held-out table as Markdown lines (a heading, then one row per submission)."""
    expected = any("expected_score" in r for r in rows)
    lines = ["## Held-out test split", "", "| submission | score | share of learnable signal |"
             + (" expected score (labels drawn again) |" if expected else ""), "| --- " * (3 + expected) + "|"]
    return lines + [f"| {r['submission']} | {r['score']:.4f} | {100 * r.get('signal_captured', float('nan')):.0f}% |"
                    + (f" {r.get('expected_score', float('nan')):.4f} |" if expected else "") for r in rows]


def across_reports(report_dirs: list[Path]) -> pd.DataFrame:
    """The held-out tables of several reports folders (say one per generator seed) summarised: per submission the
    mean and the spread (max - min) of the score, its parts and the share of signal over the reports, and
    whether the ensemble is at least as good as its best member in every one. Each report's test-split
    localization (localization_test.json, where there is one) adds the share of points within 5 mm and of
    studies with a point a level off. A number or a submission that some report lacks gets no mean (NaN) and is
    named in `summary.attrs["missing"]` with the reports that lack it."""
    rows, names = [], [str(folder) for folder in report_dirs]
    for folder in report_dirs:
        metrics_file = Path(folder) / "metrics.json"
        if not metrics_file.is_file():
            raise FileNotFoundError(f"{metrics_file}: no metrics.json (run evaluate.py --submissions for that set)")
        test = json.loads(metrics_file.read_text()).get("test")
        if not test:
            raise ValueError(f"{metrics_file}: no held-out table (evaluate.py was run without --submissions)")
        located = {}
        loc_file = Path(folder) / "localization_test.json"
        if loc_file.is_file():
            loc = json.loads(loc_file.read_text())
            points = pd.DataFrame(loc["localization"])
            located = {"within_5mm": float((points["within_5mm"] * points["points"]).sum() / points["points"].sum()),
                       "studies_level_off": loc["studies_with_a_point_a_level_off"] / loc["studies"]}
        rows += [{"report": str(folder), **r, **located} for r in test]
    table = pd.DataFrame(rows)
    parts = [c for c in table.columns if c not in ("report", "submission")]

    # A number that some report lacks (an older metrics.json, a member trained on one set only) has no mean over
    # the reports: a mean of the others would read as one over all of them.
    grouped = table.groupby("submission", sort=False)[parts]
    complete = grouped.count() == len(names)
    mean, spread = grouped.mean().where(complete), (grouped.max() - grouped.min()).where(complete)
    summary = pd.DataFrame({f"{p}_{stat}": frame[p] for p in parts for stat, frame in (("mean", mean), ("spread", spread))})
    scores = table.pivot(index="report", columns="submission", values="score")
    members = [n for n in table["submission"].unique() if n not in ("prior", "oracle", "ensemble")]
    if "ensemble" in set(table["submission"]) and members:
        summary["ensemble_at_least_best_member"] = None
        summary.loc["ensemble", "ensemble_at_least_best_member"] = bool(
            (scores["ensemble"] <= scores[members].min(axis=1)).all())
    summary = summary.reset_index()
    lacks = table[parts].isna().groupby(table["report"]).any()
    lacking = {**{s: [n for n in names if pd.isna(scores.at[n, s])] for s in table["submission"].unique()},
               **{p: [n for n in names if lacks.at[n, p]] for p in parts}}
    summary.attrs["missing"] = {k: v for k, v in lacking.items() if v}
    return summary


def across_lines(summary: pd.DataFrame) -> list[str]:
    """across_reports' summary as Markdown lines: mean (spread) of each number per submission."""
    parts = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    lines = ["| submission | " + " | ".join(parts) + " |", "| --- " * (len(parts) + 1) + "|"]
    for r in summary.to_dict("records"):
        cells = ["-" if pd.isna(r[p + "_mean"]) else f"{r[p + '_mean']:.4f} ({r[p + '_spread']:.4f})" for p in parts]
        lines.append(f"| {r['submission']} | " + " | ".join(cells) + " |")
    missing = summary.attrs.get("missing", {})
    if missing:
        lines += ["", "- (not in every report): " + "; ".join(f"{k} missing from {', '.join(v)}" for k, v in missing.items())]
    if "ensemble_at_least_best_member" in summary:
        verdict = summary.set_index("submission").loc["ensemble", "ensemble_at_least_best_member"]
        lines += ["", f"ensemble at least as good as its best member in every report: {'yes' if verdict else 'no'}"]
    return lines


def held_out_table(submissions: Path, data_dir: Path) -> pd.DataFrame:
    """Scores on a held-out split with an answer key (the synthetic test_solution.csv): the training prior,
    the submissions infer.py writes in a folder (submission.csv, the ensemble, and submission_{model}.csv), the
    oracle, and the share of signal. Other files there (the coordinates, the faults) are not submissions. On a
    synthetic set (test_latent.csv beside it) also each one's expected score: the labels drawn again from the
    generator's label probabilities, the readers' noise averaged out (metric.expected_score_parts)."""
    solution = load_solution(Path(data_dir) / "test_solution.csv")
    ids = solution["row_id"].tolist()
    frames = {"prior": prior_submission(solution_frame(load_train(Path(data_dir) / "train.csv")), ids)}
    folder = Path(submissions)
    for path in [*folder.glob("submission.csv"), *sorted(folder.glob("submission_*.csv"))]:
        frames["ensemble" if path.stem == "submission" else path.stem.replace("submission_", "")] = load_submission(path)
    oracle = Path(data_dir) / "test_oracle.csv"
    if oracle.is_file():
        frames["oracle"] = load_submission(oracle)
    table = pd.DataFrame([{"submission": n, **score_parts(solution, f)} for n, f in frames.items()])
    if oracle.is_file():
        prior, best = table["score"].iloc[0], table["score"].iloc[-1]
        table["signal_captured"] = (prior - table["score"]) / (prior - best)
    latent = Path(data_dir) / "test_latent.csv"
    if latent.is_file():
        probs = load_label_probabilities(latent).set_index("row_id").reindex(ids)
        missing = probs.index[probs.isna().any(axis=1)]
        if len(missing):
            raise DataError(f"{latent}: no label probabilities for row {missing[0]!r} of test_solution.csv")
        probs = probs.rename_axis("row_id").reset_index()
        table["expected_score"] = [expected_score_parts(probs, f)["score"] for f in frames.values()]
    return table
