"""A labels CSV: image files in a folder (or its sub-folders) and one CSV pairing each image with its class, as
Kaggle data sets come, e.g. ``head_ct/000.png`` .. ``head_ct/199.png`` beside ``labels.csv``::

    id, hemorrhage
    0,0
    1,0
    ...

:func:`labels_csv_entries` reads such a CSV tolerantly:

- **the table**: UTF-8 with or without a byte-order mark; comma, semicolon or tab delimited (sniffed); header names and
  values stripped of surrounding blanks and matched case-insensitively; blank rows skipped; columns without a header
  name (a pandas index written by ``to_csv``) ignored;
- **the file column**: the column whose values name existing image files under the image folder, each value matched
  in turn as a path relative to the folder (``head_ct/000.png``), the same without its suffix (``head_ct/000``), a
  file name (``000.png``), a file stem (``000``), and, for an integer, the one file whose stem is that integer
  (``0`` -> ``000.png``; not zero-padded ids). A column is a candidate when more than half of its rows name a file and
  more than half of its values are distinct (a 0/1 label column names ``000.png`` and ``001.png`` too, but repeats);
- **the label column**: the one other column, or the one named by ``label_column``. Labels that are all integers are
  classes in numeric order; a 0/1 column gets names from its header, ``no_<header>`` (0) and ``<header>`` (1), other
  integers ``<header>_<value>``; any other labels are class names as written, numbered in sorted order (as class
  folders are).

Errors (:class:`~common.data.errors.DatalistError`, naming the CSV): no file column, or more than one candidate
column; a label column that is missing, not found, or holds one class; a row without a label; ids that name no image
or more than one (a few listed, with their count); the same image named twice. Images under the folder that no row
names are left out, with a warning that counts them and names a few.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from common.data.errors import DatalistError

logger = logging.getLogger(__name__)

DELIMITERS = ",;\t"
SHOWN = 5  # examples listed in a message
_INTEGER = re.compile(r"[+-]?\d+")


def find_labels_csv(folder: Path) -> Path | None:
    """The labels CSV of ``folder``: its only ``.csv`` file (any case, top level), or None if it holds none.

    Raises:
        DatalistError: the folder holds several; the message lists them.
    """
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.is_file()
                   and not p.name.startswith("."))
    if len(found) > 1:
        raise DatalistError(f"{folder} holds several CSV files ({', '.join(p.name for p in found)}); give the labels "
                            f"CSV itself as dataset_dir, e.g. --dataset_dir {found[0]}")
    return found[0] if found else None


def labels_csv_entries(
    csv_path: Path, image_root: Path, suffixes: Sequence[str], label_column: str | None = None
) -> tuple[list[dict], dict[str, str]]:
    """The labelled images of a labels CSV (module docstring).

    Args:
        csv_path: the CSV.
        image_root: the folder its file column is relative to (searched recursively; hidden files skipped).
        suffixes: the image file suffixes, lower case, e.g. ``(".png", ".jpg", ".jpeg", ".npy")``.
        label_column: the label column's header (any case); None: the one column beside the file column.

    Returns:
        ``([{"image": absolute path, "label": class index}, ...] in the CSV's row order, {"0": name, ...})``.

    Raises:
        DatalistError: as the module docstring lists.
    """
    header, rows = _read_table(csv_path)
    columns = {name: [row[i] for _, row in rows] for i, name in enumerate(header) if name}
    index = _ImageIndex(image_root, suffixes)
    label_name = _named_column(columns, label_column, csv_path) if label_column is not None else None
    file_name = _file_column(columns, label_name, index, csv_path, image_root)
    if label_name is None:
        others = [name for name in columns if name != file_name]
        if len(others) != 1:
            found = (f"more than one candidate label column ({', '.join(map(repr, others))})" if others
                     else "no label column")
            raise DatalistError(f"{csv_path}: {found} beside the file column {file_name!r}; name the label column "
                                f"with --label_column")
        label_name = others[0]
    lines = [line for line, _ in rows]
    images = _images(columns[file_name], lines, index, csv_path, file_name, image_root)
    labels, names = _classes(columns[label_name], lines, label_name, csv_path)
    unlisted = sorted(set(index.files) - set(images))
    if unlisted:
        logger.warning("%d images under %s have no row in %s and are left out, e.g. %s", len(unlisted), image_root,
                       csv_path.name, ", ".join(str(p.relative_to(image_root)) for p in unlisted[:SHOWN]))
    logger.info("%s: file column %r, label column %r: %d images, classes %s", csv_path, file_name, label_name,
                len(images), ", ".join(f"{i} {name!r}" for i, name in enumerate(names)))
    entries = [{"image": str(image), "label": label} for image, label in zip(images, labels)]
    return entries, {str(i): name for i, name in enumerate(names)}


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and the non-blank rows ``(line number, stripped values)`` of a CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatalistError(f"cannot read labels CSV {path}: {error}") from error
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=DELIMITERS)
    except csv.Error:  # one column, or too few rows to tell: commas
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    numbered = [(reader.line_num, [value.strip() for value in row]) for row in reader]
    numbered = [(line, row) for line, row in numbered if any(row)]
    if len(numbered) < 2:
        raise DatalistError(f"{path} needs a header row (e.g. 'id,label') and one row per image")
    (_, header), rows = numbered[0], numbered[1:]
    named = [name.lower() for name in header if name]
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise DatalistError(f"{path}: header names {repeated} appear more than once (names are matched ignoring case)")
    for line, row in rows:
        if len(row) != len(header):
            raise DatalistError(f"line {line} of {path} has {len(row)} values; the header has {len(header)}")
    return header, rows


class _ImageIndex:
    """The image files under a folder, looked up by what a CSV may call them (module docstring)."""

    def __init__(self, root: Path, suffixes: Sequence[str]):
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(root).parts))
        self.keys: list[dict[str, list[Path]]] = [defaultdict(list) for _ in range(4)]
        self.integers: dict[int, list[Path]] = defaultdict(list)
        for file in self.files:
            relative = file.relative_to(root).as_posix().lower()
            for keys, key in zip(self.keys, (relative, relative[: len(relative) - len(file.suffix)],
                                             file.name.lower(), file.stem.lower())):
                keys[key].append(file)
            if _INTEGER.fullmatch(file.stem):
                self.integers[int(file.stem)].append(file)

    def find(self, value: str) -> list[Path]:
        """The files ``value`` names: those of the first way of naming that matches any (maybe several)."""
        key = str(PurePosixPath(value.replace("\\", "/"))).lower()
        for keys in self.keys:
            if key in keys:
                return keys[key]
        return self.integers.get(int(value), []) if _INTEGER.fullmatch(value) else []


def _named_column(columns: dict[str, list[str]], name: str, path: Path) -> str:
    found = [column for column in columns if column.lower() == name.strip().lower()]
    if not found:
        raise DatalistError(f"{path} has no column {name!r}; its columns: {', '.join(map(repr, columns))}")
    return found[0]


def _file_column(columns: dict[str, list[str]], label_name: str | None, index: _ImageIndex, path: Path,
                 root: Path) -> str:
    """The one column whose values name image files (module docstring)."""
    matched = {name: sum(bool(index.find(v)) for v in values) for name, values in columns.items() if name != label_name}
    candidates = [name for name, count in matched.items()
                  if 2 * count > len(columns[name]) and 2 * len(set(columns[name])) > len(columns[name])]
    if len(candidates) > 1:
        raise DatalistError(f"{path}: more than one column names image files under {root} "
                            f"({', '.join(map(repr, candidates))}); name the label column with --label_column")
    if not candidates:
        found = "; ".join(f"{name!r} names {count} of {len(columns[name])} (e.g. {columns[name][0]!r})"
                          for name, count in matched.items())
        raise DatalistError(f"{path}: no column names the images under {root} ({len(index.files)} found): {found}. A "
                            f"value names a file by its path relative to {root} (with or without suffix), its name, "
                            f"its stem, or an integer equal to its stem (0 -> 000.png)")
    return candidates[0]


def _images(values: list[str], lines: list[int], index: _ImageIndex, path: Path, column: str,
            root: Path) -> list[Path]:
    """The one file each value names."""
    found = [index.find(value) for value in values]
    missing = [value for value, files in zip(values, found) if not files]
    if missing:
        raise DatalistError(f"{len(missing)} ids of column {column!r} of {path} name no image under {root}: "
                            f"{', '.join(map(repr, missing[:SHOWN]))}{' ...' if len(missing) > SHOWN else ''}")
    several = [(value, files) for value, files in zip(values, found) if len(files) > 1]
    if several:
        raise DatalistError(f"{len(several)} ids of column {column!r} of {path} name several images: " + "; ".join(
            f"{value!r}: {', '.join(str(f.relative_to(root)) for f in files)}" for value, files in several[:SHOWN]))
    images = [files[0] for files in found]
    counts = Counter(images)
    repeated = [(line, value) for line, value, image in zip(lines, values, images) if counts[image] > 1]
    if repeated:
        shown = ", ".join(f"line {line} {value!r}" for line, value in repeated[:SHOWN])
        raise DatalistError(f"{path}: {sum(count > 1 for count in counts.values())} images are named by more than one "
                            f"row (duplicate ids): {shown}")
    return images


def _classes(values: list[str], lines: list[int], header: str, path: Path) -> tuple[list[int], list[str]]:
    """Class indices of the label values and the class names (module docstring)."""
    blank = [line for line, value in zip(lines, values) if not value]
    if blank:
        raise DatalistError(f"{path}: lines {blank[:SHOWN]} have no value in the label column {header!r}")
    numbers = [_integer(value) for value in values]
    if all(number is not None for number in numbers):
        distinct = sorted(set(numbers))
        names = [f"no_{header}", header] if distinct == [0, 1] else [f"{header}_{value}" for value in distinct]
        keys = numbers
    else:
        distinct = sorted(set(values))
        names, keys = distinct, values
    if len(distinct) < 2:
        raise DatalistError(f"{path}: the label column {header!r} holds one class ({values[0]!r}) in all "
                            f"{len(values)} rows; a classifier needs at least two")
    return [distinct.index(key) for key in keys], names


def _integer(value: str) -> int | None:
    """``value`` as an int if it is one (``"1"``, ``"1.0"``), else None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None
