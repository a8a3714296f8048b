"""The evaluation's report: the Markdown tables and, for one sensor, the figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamwatch.evaluation.datasets import Dataset
from streamwatch.evaluation.runs import Run


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


PROTOCOL_NOTES = {
    "warmup": "warm-up: the engine learns each sensor from its own training readings",
    "train": "train: one model fitted on every sensor's training readings at once "
    "(plus any extra normal series), then each whole series replayed with it",
    "groups": "groups: the [groups] patterns make each group (a SKAB experiment) one "
    "multivariate model over its aligned members, warmed up on its training rows, one alert "
    "per group",
}


def _label(name: str, d: Mapping[str, Any]) -> str:
    p = d.get("protocol")
    return f"`{name}`" + (f" ({p})" if p else "")


def protocol_lines(res: Mapping[str, Any]) -> list[str]:
    """What each protocol did, the SKAB group figures and the NAB difference, as Markdown."""
    dets: Mapping[str, Any] = res["detectors"]
    lines: list[str] = []
    for p in res.get("protocols", {}):
        lines.append(f"- protocol {PROTOCOL_NOTES.get(p, p)}.")
    if res.get("extra_training_series"):
        lines.append(
            f"- the train protocol also fits on {len(res['extra_training_series'])} extra normal "
            "series (e.g. SKAB's anomaly-free run); the warm-up protocol learns from each "
            "sensor's own training readings only."
        )
    if "nab_standard_abs_diff" in res:
        lines.append(
            f"- NAB standard score, |warm-up − train| = **{res['nab_standard_abs_diff']:.1f}**."
        )
    skab = {n: d for n, d in dets.items() if "skab" in d}
    if skab:
        cols = [
            "detector",
            "events found",
            "false raises",
            "point P",
            "point R",
            "point F1",
            "mean delay (s)",
        ]
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name, d in skab.items():
            g = d["skab"]
            lines.append(
                f"| {_label(name, d)} | {g['found']}/{g['events']} | {g['false_raises']} | "
                f"{_f(g['point_precision'])} | {_f(g['point_recall'])} | "
                f"{_f(g['point_f1'])} | {_f(g['mean_delay_s'], 1)} |"
            )
        lines += [
            "",
            "An event is found when any sensor of its experiment raises inside it; a false "
            "raise is a raise on any sensor outside every event of its experiment; point-wise "
            "F1: a row is predicted anomalous while any sensor of its experiment has an alert "
            "raised and not yet cleared, against the `anomaly` column, after the training rows.",
        ]
    return lines


def seed_spread_lines(spread: Mapping[str, Any]) -> list[str]:
    """The seed-spread figures as Markdown."""
    lines = [
        f"Seeds {spread['seeds']} on {spread['dataset']} ({spread['sensors']} sensors); the "
        f"detector {'has' if spread['detector_has_seed'] else 'has no'} `seed` setting.",
        "",
        f"- threshold ratio max/min over seeds, per sensor: median "
        f"**{_f(spread['ratio_median'])}**, worst **{_f(spread['ratio_worst'])}**"
        + (
            f" ({spread['ratio_undefined']} sensors with a non-positive threshold: no ratio)"
            if spread["ratio_undefined"]
            else ""
        ),
    ]
    for seed, f in spread["found_per_seed"].items():
        lines.append(
            f"- seed {seed}: {f['found']}/{f['events']} events found, {f['false']} false alerts"
        )
    return lines


def markdown(results: Sequence[Mapping[str, Any]], header: Mapping[str, Any]) -> str:
    """The Markdown report for every evaluated data set."""
    lines = ["# streamwatch evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in header.items()]
    for res in results:
        dets: Mapping[str, Any] = res["detectors"]
        lines += [
            "",
            f"## {res['dataset']}",
            "",
            f"{res['sensors']} sensors/series, {res['readings']} readings, {res['events']} "
            f"labelled events; training (warm-up) readings per sensor: "
            f"{res['training_readings_per_sensor']}; alert tolerance after an event: "
            f"{res['tolerance_s']:g} s. Split: **{res.get('split', 'all')}**.",
            "",
        ]
        nab = any("nab" in d for d in dets.values())
        cols = [
            "detector",
            "event recall",
            "alert precision",
            "event F1",
            "false alarms / 100k",
            "mean delay (s)",
            "AUC-PR",
        ]
        if nab:
            cols += ["NAB standard", "NAB low FP", "NAB low FN"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name, d in dets.items():
            row = [
                _label(name, d),
                f"{_f(d['recall'])} ({d['detected']}/{d['events']})",
                f"{_f(d['precision'])} ({d['true_alerts']}/{d['alerts']})",
                _f(d["f1"]),
                f"{_f(d['false_alarms_per_100k'], 2)} ({d['false_alerts']})",
                _f(d["mean_delay_s"], 1),
                _f(d["auc_pr"]),
            ]
            if nab:
                n = d["nab"]
                row += [
                    _f(n[p]["score"], 1)
                    for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
                ]
            lines.append("| " + " | ".join(row) + " |")
        extra = protocol_lines(res)
        if extra:
            lines += ["", *extra]
        if "seed_spread" in res:
            lines += [
                "",
                "### Seed spread (train protocol)",
                "",
                *seed_spread_lines(res["seed_spread"]),
            ]
        first = next(iter(dets.values()), None)
        if first is not None and first["positive_rate"] is not None:
            lines += [
                "",
                f"AUC-PR of a random scorer = positive rate = {first['positive_rate']:.3f}.",
            ]
        kinds = sorted({k for d in dets.values() for k in d["per_kind"]})
        if kinds:
            for title, key, digits in (
                ("Event recall by kind", "recall", 2),
                ("AUC-PR by kind", "auc_pr", 3),
                ("Mean detection delay by kind (s)", "mean_delay_s", 1),
            ):
                lines += [
                    "",
                    f"### {title}",
                    "",
                    "| detector | " + " | ".join(kinds) + " |",
                    "|" + "---|" * (len(kinds) + 1),
                ]
                for name, d in dets.items():
                    pk = d["per_kind"]
                    lines.append(
                        f"| {_label(name, d)} | "
                        + " | ".join(_f(pk[k][key], digits) if k in pk else "–" for k in kinds)
                        + " |"
                    )
            counts = first["per_kind"] if first is not None else {}
            lines += [
                "",
                "Events per kind: "
                + ", ".join(f"{k} {counts[k]['events']}" for k in kinds if k in counts)
                + ".",
            ]
        for name, why in res["skipped"].items():
            lines += ["", f"Skipped `{name}`: {why}"]
    return "\n".join(lines) + "\n"


def _time_unit(span_s: float) -> tuple[float, str]:
    """Seconds per plotting unit, and its name, for a time span."""
    if span_s <= 6 * 3600:
        return 60.0, "minutes"
    if span_s <= 10 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def _wide_positive(x: np.ndarray) -> bool:
    """Whether positive values span enough orders of magnitude to want a log axis."""
    return x.size > 0 and float(x.min()) > 0 and float(x.max()) / float(x.min()) > 100


def plot(ds: Dataset, run: Run, sensor: str, path_prefix: Path) -> list[Path]:
    """Two PNG figures for one sensor: signal/score/threshold/alerts/labels, and histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = ds.ts[sensor]
    unit, unit_name = _time_unit(float(t[-1] - t[0]))

    def rel(x: np.ndarray | float) -> Any:
        return (np.asarray(x) - t[0]) / unit

    v, y, s = ds.value[sensor], ds.label[sensor].astype(bool), run.score[sensor]
    thr = run.threshold.get(sensor)
    n_train = ds.n_train[sensor]
    finite = s[np.isfinite(s)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    ax1.plot(rel(t), v, lw=0.5, color="tab:blue", label="reading")
    for e in ds.events:
        if e.sensor != sensor:
            continue
        for ax in (ax1, ax2):
            ax.axvspan(rel(e.start), rel(e.end), color="tab:red", alpha=0.15, lw=0)
        ax1.text(rel(e.start), float(np.nanmax(v)), e.kind, fontsize=7, rotation=90, va="top")
    if n_train < t.size:
        ax1.axvline(rel(t[n_train]), color="grey", ls=":", label="end of training")
    ax1.set_ylabel("value")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(rel(t), s, lw=0.5, color="tab:green", label="score")
    if thr is not None:
        ax2.axhline(thr, color="black", ls="--", lw=0.8, label=f"threshold {thr:.3g}")
    marks = run.alerts.get(sensor, np.empty(0))
    level = thr if thr is not None else (float(finite.max()) if finite.size else 0.0)
    ax2.plot(rel(marks), np.full(marks.size, level), "v", color="tab:red", label="alert raised")
    if _wide_positive(finite):
        ax2.set_yscale("log")
    ax2.set_ylabel("score")
    ax2.set_xlabel(f"{unit_name} (shaded: labelled anomalies)")
    ax2.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{ds.name} / {sensor} / {run.detector}")
    fig.tight_layout()
    safe = sensor.replace("/", "_").replace(".csv", "")
    p1 = path_prefix.with_name(f"{path_prefix.name}_{safe}_signal.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    use = np.isfinite(s) & (np.arange(t.size) >= n_train)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    both = s[use]
    if both.size:
        lo = float(both.min())
        hi = max(float(np.quantile(both, 0.999)), thr if thr is not None else -np.inf)
        log_x = _wide_positive(np.array([lo, hi]))
        bins = np.geomspace(lo, hi, 80) if log_x else np.linspace(lo, hi, 80)
        for mask, name in ((use & ~y, "normal"), (use & y, "anomalous")):
            ax.hist(
                np.clip(s[mask], lo, hi),
                bins=bins.tolist(),
                alpha=0.6,
                density=True,
                label=f"{name} ({int(mask.sum())} readings)",
            )
        if log_x:
            ax.set_xscale("log")
    if thr is not None:
        ax.axvline(thr, color="black", ls="--", label=f"threshold {thr:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("score (clipped at the 99.9th percentile)")
    ax.set_ylabel("density")
    ax.set_title(f"{ds.name} / {sensor} / {run.detector}\nscores after training", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = path_prefix.with_name(f"{path_prefix.name}_{safe}_hist.png")
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]
