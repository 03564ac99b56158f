"""Text classification / regression data: GLUE's TSV layouts, generic CSV / TSV / JSON / JSONL files
with named columns, and Hugging Face dataset names. Everything becomes a ``TextExamples``.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TextExamples", "GLUE_TASKS", "glue_task_for", "read_glue", "read_table", "read_hf_dataset", "DataError"]

csv.field_size_limit(sys.maxsize)


class DataError(ValueError):
    """Bad or missing data; the message names the file, the column and the fix."""


@dataclass
class TextExamples:
    text_a: list[str]
    text_b: list[str] | None
    labels: list  # str / int class labels, or floats for regression
    source: str

    def __len__(self) -> int:
        return len(self.text_a)

    def take(self, n: int | None) -> TextExamples:
        if n is None or n >= len(self):
            return self
        return TextExamples(self.text_a[:n], self.text_b[:n] if self.text_b else None, self.labels[:n], self.source)


# GLUE's files as distributed: (header?, text_a, text_b, label, label names or "regression").
# Columns are names when the file has a header, else 0-based indices.
GLUE_TASKS = {
    "cola": dict(header=False, text_a=3, text_b=None, label=1, labels=["0", "1"]),
    "sst2": dict(header=True, text_a="sentence", text_b=None, label="label", labels=["0", "1"]),
    "mrpc": dict(header=True, text_a="#1 String", text_b="#2 String", label="Quality", labels=["0", "1"]),
    "stsb": dict(header=True, text_a="sentence1", text_b="sentence2", label="score", labels="regression"),
    "rte": dict(header=True, text_a="sentence1", text_b="sentence2", label="label", labels=["entailment", "not_entailment"]),
    "qnli": dict(header=True, text_a="question", text_b="sentence", label="label", labels=["entailment", "not_entailment"]),
}
_FOLDER_NAMES = {"cola": "cola", "sst-2": "sst2", "sst2": "sst2", "mrpc": "mrpc", "sts-b": "stsb", "stsb": "stsb", "rte": "rte", "qnli": "qnli"}


def glue_task_for(folder: str | Path) -> str | None:
    """GLUE task of a folder named as GLUE distributes it (CoLA, SST-2, MRPC, STS-B, RTE, QNLI)."""
    return _FOLDER_NAMES.get(Path(folder).name.lower())


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path} not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; give a file with a header and at least one row")


def _column(rows, header, column, path):
    if isinstance(column, int):
        if any(len(r) <= column for r in rows):
            bad = next(i for i, r in enumerate(rows) if len(r) <= column)
            raise DataError(f"{path}: row {bad + 1} has {len(rows[bad])} fields, expected at least {column + 1}")
        return [r[column] for r in rows]
    if column not in header:
        raise DataError(f"{path}: no column {column!r}; the columns are {header}. Name the right one (e.g. --text-column)")
    i = header.index(column)
    return [r[i] if i < len(r) else "" for r in rows]


def read_glue(path: str | Path, task: str) -> TextExamples:
    """A GLUE split file (train.tsv / dev.tsv): tab-separated, quoting off, optional UTF-8 BOM."""
    path, layout = Path(path), GLUE_TASKS[task]
    _check_file(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    header = rows.pop(0) if layout["header"] else None
    if not rows:
        raise DataError(f"{path} has no data rows")
    text_a = _column(rows, header, layout["text_a"], path)
    text_b = _column(rows, header, layout["text_b"], path) if layout["text_b"] is not None else None
    labels = _column(rows, header, layout["label"], path)
    return TextExamples(text_a, text_b, labels, str(path))


def _read_records(path: Path) -> list[dict]:
    try:
        return _parse_records(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None


def _parse_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        for i, r in enumerate(records):
            if None in r:  # more fields than the header: csv puts the rest under the key None
                raise DataError(
                    f"{path}: row {i + 2} has more fields than the header ({len(r) - 1}); quote fields that contain "
                    f"the delimiter, e.g. \"A dazzling, heartfelt film.\""
                )
        return records
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if not all(isinstance(r, dict) for r in records):
            raise DataError(f"{path}: every line must be a JSON object")
        return records
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return data
    raise DataError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .json or .jsonl")


def _records_to_examples(records, source, text_column, pair_column, label_column) -> TextExamples:
    if not records:
        raise DataError(f"{source} has no rows")
    columns = list(records[0])
    for name in (text_column, pair_column, label_column):
        if name is not None and name not in columns:
            raise DataError(
                f"{source}: no column {name!r}; the columns are {columns}. Name the right one "
                "(train: text_column= / text_pair_column= / label_column=; eval and predict: --text-column / --text-pair-column / --label-column)"
            )
    text_a = [str(r.get(text_column)) for r in records]
    text_b = [str(r.get(pair_column)) for r in records] if pair_column else None
    labels = [r.get(label_column) for r in records]
    empty = next((i for i, v in enumerate(labels) if v is None or (isinstance(v, float) and v != v) or str(v).strip().lower() in ("", "nan", "none", "null")), None)
    if empty is not None and label_column is not None:
        raise DataError(f"{source}: row {empty + 1} has no label in column {label_column!r}; fill or drop unlabelled rows (predict reads files without labels)")
    return TextExamples(text_a, text_b, labels, source)


def read_table(path: str | Path, text_column: str = "text", pair_column: str | None = None, label_column: str = "label") -> TextExamples:
    """A CSV / TSV / JSON / JSONL file with named columns."""
    path = Path(path)
    _check_file(path)
    return _records_to_examples(_read_records(path), str(path), text_column, pair_column, label_column)


def read_hf_dataset(name: str, split: str, text_column: str = "text", pair_column: str | None = None, label_column: str = "label") -> TextExamples:
    """A Hugging Face dataset, "name" or "name/config" (e.g. "nyu-mll/glue/sst2" -> config "sst2")."""
    from datasets import load_dataset

    path, _, config = name.rpartition("/") if name.count("/") >= 2 else (name, "", None)
    dataset = load_dataset(path, config, split=split)
    return _records_to_examples(list(dataset), f"{name}[{split}]", text_column, pair_column, label_column)
