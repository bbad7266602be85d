"""The forgetting matrix: safety of every risk (columns) after every stage (rows), with its summary metrics.

``S[i][j]`` is the safety score in [0, 1] (higher is safer) of risk ``j`` after row ``i``. Two layouts exist:

- *sequential* (sequential, sequential-replay, stacked): row 0 is the unpatched base model and row ``i``
  is the patch after training stage ``i``, which trained risk ``i`` (rows of kind ``"stage"``);
- *composed* (concatenated, merged, joint): the base row, one ``"specialist"`` row per risk (a patch trained
  on that risk alone, evaluated on every risk), then the ``"composed"`` patch as the last row.

Each cell keeps the risk metric's raw figures and their directions; each row may keep fluency figures
(e.g. perplexity) and wall seconds. ``summary()`` states the definition and divisor of every figure, because
continual-learning libraries disagree on them (README, "The forgetting matrix").

Uncertainty: a row may keep, per risk, the per-prompt values of each figure (``items``; ``items[risk]["safety"]``
averages to the cell's safety score) and their 95% intervals (``intervals``). Summary figures then carry a
95% interval too: the prompts of each risk are resampled (bootstrap, 1000 draws), the same draw for every row
(rows are evaluated on the same prompts, so stage-to-stage differences such as F and BWT are paired), and every
figure is recomputed from the resampled matrix; the interval is the 2.5-97.5 percentile range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compose.errors import ComposeError
from compose.io import atomic_write_json, read_json

KINDS = ("base", "stage", "specialist", "composed")
DIRECTIONS = ("lower", "higher")


@dataclass
class Row:
    """One row of the matrix: a model evaluated on every risk."""

    name: str
    scores: dict[str, float]
    raw: dict[str, dict[str, float]] = field(default_factory=dict)
    fluency: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    kind: str = "stage"
    trained: str | None = None
    intervals: dict[str, dict] = field(default_factory=dict)  # risk -> figure -> {value, ci_low, ci_high, n, method}
    items: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # risk -> figure -> per-prompt values
    digests: dict[str, str] = field(default_factory=dict)  # risk -> hash of the prompts evaluated (pairs rows)

    def safety_interval(self, risk: str) -> dict | None:
        return self.intervals.get(risk, {}).get("safety")


def _figure(value, definition: str, per_risk: dict | None = None, note: str | None = None) -> dict:
    out = {"value": value, "definition": definition}
    if per_risk is not None:
        out["per_risk"] = per_risk
    if note:
        out["note"] = note
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class ForgettingMatrix:
    """Safety scores ``S[row][risk]``; ``risks`` are the columns, in training order."""

    def __init__(self, risks: list[str]):
        if not risks or len(set(risks)) != len(risks):
            raise ValueError(f"risks must be a non-empty list of distinct names, got {risks}")
        self.risks = list(risks)
        self.rows: list[Row] = []
        self.directions: dict[str, dict[str, str]] = {r: {} for r in self.risks}

    def add_row(self, name: str, scores: dict[str, float], raw: dict[str, dict] | None = None,
                directions: dict[str, dict] | None = None, fluency: dict | None = None,
                seconds: float | None = None, kind: str = "stage", trained: str | None = None,
                intervals: dict | None = None, items: dict | None = None, digests: dict | None = None) -> Row:
        """Append a row. ``scores`` needs every risk; ``directions[risk][metric]`` is "lower" or "higher"."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        missing = [r for r in self.risks if r not in scores]
        extra = [r for r in scores if r not in self.risks]
        if missing or extra:
            raise ValueError(f"row {name!r}: scores must cover exactly {self.risks} (missing {missing}, unknown {extra})")
        for risk, score in scores.items():
            if not 0.0 <= float(score) <= 1.0:
                raise ValueError(f"row {name!r}: safety score of {risk!r} must be in [0, 1], got {score}")
        if trained is not None and trained not in self.risks:
            raise ValueError(f"row {name!r}: trained risk {trained!r} is not one of {self.risks}")
        if kind in ("stage", "specialist") and trained is None:
            raise ValueError(f"row {name!r}: a {kind} row needs the risk it trained (trained=...)")
        for risk, metrics in (directions or {}).items():
            if risk not in self.risks:
                raise ValueError(f"row {name!r}: directions name unknown risk {risk!r} (risks: {self.risks})")
            for metric, direction in metrics.items():
                if direction not in DIRECTIONS:
                    raise ValueError(f"direction of {risk}/{metric} must be one of {DIRECTIONS}, got {direction!r}")
                self.directions.setdefault(risk, {})[metric] = direction
        row = Row(name, {r: float(scores[r]) for r in self.risks},
                  {r: {m: float(v) for m, v in d.items()} for r, d in (raw or {}).items()},
                  {m: float(v) for m, v in (fluency or {}).items()},
                  None if seconds is None else float(seconds), kind, trained,
                  {r: dict(d) for r, d in (intervals or {}).items() if r in self.risks},
                  {r: {f: [float(x) for x in v] for f, v in d.items()} for r, d in (items or {}).items()
                   if r in self.risks},
                  {r: str(d) for r, d in (digests or {}).items() if r in self.risks and d})
        self.rows.append(row)
        return row

    @property
    def safety(self) -> np.ndarray:
        """``rows x risks`` array of safety scores."""
        return np.array([[row.scores[r] for r in self.risks] for row in self.rows], dtype=float).reshape(-1, len(self.risks))

    @property
    def layout(self) -> str:
        """"composed" when the matrix has specialist or composed rows, else "sequential"."""
        return "composed" if any(r.kind in ("specialist", "composed") for r in self.rows) else "sequential"

    def summary(self) -> dict:
        """Summary figures, each ``{"value", "definition"[, "per_risk"][, "note"]}``; undefined values are None."""
        if not self.rows:
            raise ValueError("the forgetting matrix has no rows yet")
        figures = self._figures(self.safety)
        self._add_intervals(figures)
        seconds = [r.seconds for r in self.rows if r.seconds is not None]
        figures["wall_seconds"] = _figure(float(sum(seconds)) if seconds else None, "sum of the rows' wall seconds")
        figures["final_fluency"] = _figure(dict(self.rows[-1].fluency) or None, "fluency figures of the last row")
        return {"layout": self.layout, "risks": list(self.risks), "final_row": self.rows[-1].name, **figures}

    def _figures(self, S: np.ndarray) -> dict:
        return self._composed_summary(S) if self.layout == "composed" else self._sequential_summary(S)

    def resampled_safety(self, n_boot: int = 1000, seed: int = 0) -> np.ndarray | None:
        """``n_boot x rows x risks`` safety matrices from prompts resampled per risk (the same draw for every row);
        None unless every row keeps the same number of per-prompt safety values for each risk."""
        rng = np.random.default_rng(seed)
        out = np.empty((n_boot, len(self.rows), len(self.risks)))
        for j, risk in enumerate(self.risks):
            columns = [row.items.get(risk, {}).get("safety") for row in self.rows]
            if any(not c for c in columns) or len({len(c) for c in columns}) != 1:
                return None
            idx = rng.integers(0, len(columns[0]), size=(n_boot, len(columns[0])))
            for i, column in enumerate(columns):
                out[:, i, j] = np.asarray(column)[idx].mean(axis=1)
        return out

    def _add_intervals(self, figures: dict, n_boot: int = 1000) -> None:
        """Add ci_low / ci_high / n / method to every numeric summary figure (see the module's docstring)."""
        boot = self.resampled_safety(n_boot)
        if boot is None:
            return
        draws = [self._figures(S) for S in boot]
        n = sum(len(self.rows[-1].items[r]["safety"]) for r in self.risks)
        for key, fig in figures.items():
            if not isinstance(fig.get("value"), float):
                continue
            values = np.array([d[key]["value"] for d in draws], dtype=float)
            fig["ci_low"], fig["ci_high"] = (float(v) for v in np.percentile(values, [2.5, 97.5]))
            fig["n"] = n
            fig["method"] = f"bootstrap over prompts, per risk, paired across rows ({n_boot} draws)"

    def _sequential_summary(self, S: np.ndarray) -> dict:
        stages = [r for r in self.rows if r.kind == "stage"]
        has_base = self.rows[0].kind == "base"
        expected = ["base"] * has_base + ["stage"] * len(stages)
        if [r.kind for r in self.rows] != expected or [r.trained for r in stages] != self.risks[:len(stages)]:
            raise ValueError(
                f"a sequential matrix is a base row then one stage per risk in order {self.risks}; got rows "
                f"{[(r.name, r.kind, r.trained) for r in self.rows]}")
        risks = self.risks
        k, m = len(risks), len(stages)  # m < k while a run is still in progress
        base = 0 if has_base else None
        stage = {j: j + has_base for j in range(m)}  # row index of the stage that trained risk j (0-based)
        last = len(self.rows) - 1
        earlier = list(range(m - 1))  # risks trained before the last stage
        none_note = "needs at least two training stages" if m < 2 else None

        f_max = {risks[j]: float(S[:last, j].max() - S[last, j]) for j in earlier}
        f_ava = {risks[j]: float(S[stage[j], j] - S[last, j]) for j in earlier}
        bwt = {r: -v for r, v in f_ava.items()}
        n = len(earlier)
        fwt = ({risks[j]: float(S[stage[j] - 1, j] - S[base, j]) for j in range(1, m)} if base is not None else {})
        fwt_note = none_note if base is not None else "needs the base model's row (row 0)"
        return {
            "final_average_safety": _figure(
                float(S[last].mean()), f"A = mean_j S[k][j] over the {k} risks of the last row ({self.rows[-1].name})"),
            "forgetting": _figure(
                _mean(list(f_max.values())),
                f"F_j = max_{{i<k}} S[i][j] - S[k][j] (Chaudhry et al.; DESIGN; max over rows 0..k-1, base row "
                f"included), mean over j<k, divisor k-1 = {n}",
                f_max, none_note),
            "forgetting_avalanche": _figure(
                _mean(list(f_ava.values())),
                f"F'_j = S[j][j] - S[k][j] (right after training j minus final; Avalanche), mean over j<k, "
                f"divisor k-1 = {n}", f_ava, none_note),
            "bwt": _figure(
                _mean(list(bwt.values())),
                f"BWT = mean_{{j<k}} (S[k][j] - S[j][j]) (GEM paper; DESIGN), divisor k-1 = {n}; negative = forgetting",
                bwt, none_note),
            "bwt_gem_code": _figure(
                float(sum(bwt.values()) / m) if n else None,
                f"BWT = sum_{{j<k}} (S[k][j] - S[j][j]) / k (GEM code: zero last entry), divisor k = {m}",
                note=none_note),
            "bwt_avalanche": _figure(
                -_mean(list(f_ava.values())) if n else None,
                f"BWT = -mean_{{j<k}} F'_j (Avalanche), divisor k-1 = {n}; equals bwt", note=none_note),
            "fwt": _figure(
                _mean(list(fwt.values())),
                f"FWT = mean_{{j>1}} (S[j-1][j] - S[0][j]) (GEM paper; DESIGN), divisor k-1 = {len(fwt)}",
                fwt if base is not None else None, fwt_note if not fwt else None),
        }

    def _composed_summary(self, S: np.ndarray) -> dict:
        risks = self.risks
        composed = [i for i, r in enumerate(self.rows) if r.kind == "composed"]
        kinds = [r.kind for r in self.rows]
        misplaced_base = "base" in kinds[1:]
        if "stage" in kinds or misplaced_base or (composed and composed != [len(self.rows) - 1]):
            raise ValueError(f"a composed matrix is an optional base row, specialist rows, then one composed row; "
                             f"got {kinds}")
        specialist = {r.trained: i for i, r in enumerate(self.rows) if r.kind == "specialist"}
        if len(specialist) != kinds.count("specialist"):
            raise ValueError(f"a composed matrix has at most one specialist row per risk; got "
                             f"{[r.trained for r in self.rows if r.kind == 'specialist']}")
        undefined = "not defined for specialists + composed patch: there is no sequence of training stages"
        if not composed:
            note = "no composed row yet"
            a = _figure(None, "A = mean_j S[composed][j]", note=note)
            gap = _figure(None, "F_j = S[specialist_j][j] - S[composed][j]", note=note)
        else:
            c = composed[0]
            gaps = {r: float(S[specialist[r], j] - S[c, j]) for j, r in enumerate(risks) if r in specialist}
            a = _figure(float(S[c].mean()), f"A = mean_j S[composed][j] over the {len(risks)} risks of the composed row")
            gap = _figure(_mean(list(gaps.values())),
                          f"F_j = S[specialist_j][j] - S[composed][j] (gap to the specialist), mean over the "
                          f"{len(gaps)} risks with a specialist, divisor {len(gaps)}",
                          gaps, None if gaps else "no specialist rows")
        return {"final_average_safety": a, "forgetting": gap,
                "bwt": _figure(None, "BWT", note=undefined), "fwt": _figure(None, "FWT", note=undefined)}

    def to_dict(self) -> dict:
        """JSON-able form; ``summary`` is included for readers and ignored by ``from_dict``."""
        out = {"risks": self.risks, "directions": self.directions, "rows": [asdict(r) for r in self.rows]}
        if self.rows:
            out["summary"] = self.summary()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ForgettingMatrix:
        matrix = cls(d["risks"])
        for row in d["rows"]:
            matrix.add_row(row["name"], row["scores"], raw=row.get("raw"), fluency=row.get("fluency"),
                           seconds=row.get("seconds"), kind=row.get("kind", "stage"), trained=row.get("trained"),
                           intervals=row.get("intervals"), items=row.get("items"), digests=row.get("digests"))
        for risk, metrics in d.get("directions", {}).items():
            matrix.directions.setdefault(risk, {}).update(metrics)
        return matrix

    def save(self, path) -> Path:
        """Write JSON atomically (temp sibling, then rename)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> ForgettingMatrix:
        """Read a matrix written by ``save``; a corrupt or malformed file is a one-line ``ComposeError``."""
        data = read_json(path, "forgetting matrix")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ComposeError(f"malformed forgetting matrix {path}: {type(exc).__name__} {exc}; rebuild it by "
                               f"resuming the run (after deleting it and results.json)") from None
