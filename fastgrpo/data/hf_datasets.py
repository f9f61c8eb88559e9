"""Hugging Face data sets as a row source: ``save_to_disk`` folders, ``.arrow`` files and cached hub ids.

What is recognised (:func:`is_hf_dataset`), and how it is opened (always memory-mapped, never copied into memory):

- a ``save_to_disk`` folder: a ``DatasetDict`` (``dataset_dict.json`` and one subfolder per split) or a single
  ``Dataset`` (``state.json``, ``dataset_info.json``, ``data-*.arrow``), opened with ``datasets.load_from_disk``;
  the JSON sidecars describe the data and are never read as rows;
- a single ``.arrow`` file (an Arrow stream as ``datasets`` writes it), or a folder whose data files are all
  ``.arrow``; its splits are named the way ``load_dataset`` names them (``train/``, ``data/dev-00000-of-00001.arrow``;
  a folder with no split names is one ``train`` split). ``cache-*.arrow`` files (results of ``map``/``filter``
  kept next to the data) are not data and are skipped;
- ``hf://owner/name`` (or ``hf://owner/name@revision``): a hub data set already on this machine, with the network
  off for the call. It is looked up in the ``datasets`` Arrow cache (``HF_DATASETS_CACHE``, left by an earlier
  ``load_dataset``; not with ``@revision``), then in the hub download cache (``HF_HUB_CACHE``, left by
  ``hf download --repo-type dataset owner/name``). A downloaded snapshot in ``save_to_disk`` or Arrow form is read
  in place; one in parquet/JSON form is converted once by ``load_dataset`` into the Arrow cache (disk space about
  the size of the data set) and memory-mapped from there.

Split choice: ``split=None`` takes ``train`` when there is one, else the only split, else fails with the list.

Rows are produced in batches of :data:`BATCH_ROWS` holding only the columns the layout needs (GEdit-Bench's
``input_image_raw`` is never read). The other columns of a batch are read through ``datasets`` as usual. The image
columns (those whose feature is ``datasets.Image``) are not: a cell that holds image bytes becomes an
:class:`~fastgrpo.data.lazy_images.ArrowImage`, a reference to the cell in the memory-mapped file, so that building
the records reads no image data and holds none, whatever the size of the data set (only the cells' null flags and
their ``path`` strings are read). The bytes are read when the image is probed or decoded, and go through the
safety limits of :mod:`fastgrpo.data.images` like any other image; ``datasets`` never decodes them. A cell that
holds only a path (``imagefolder`` data sets keep absolute paths) gives that path, treated like any image path:
relative to the data root, and refused when it is absolute; a cell with neither is no image (``missing_image`` for
a source).

``datasets`` and ``huggingface_hub`` are imported only when such a data set is opened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastgrpo.data.formats import ColumnMap
from fastgrpo.data.lazy_images import ArrowImage

__all__ = [
    "BATCH_ROWS",
    "HF_SCHEME",
    "HFSplit",
    "choose_split",
    "folder_splits",
    "hf_rows",
    "is_hf_dataset",
    "open_hf_split",
]

HF_SCHEME = "hf://"
BATCH_ROWS = 64  # image rows are large: small batches keep peak memory near one batch of images
_SIDECARS = frozenset({"dataset_dict.json", "state.json", "dataset_info.json"})  # save_to_disk metadata
_OTHER_DATA = (".jsonl", ".json", ".parquet")

Row = tuple[str, str, dict[str, Any]]  # (origin, default id, row)


@dataclass(frozen=True, eq=False)
class HFSplit:
    """One split of a Hugging Face data set, opened memory-mapped.

    Attributes:
        name: what was opened, for messages (``"gedit/train"``, ``"hf://owner/name[train]"``).
        split: the split's name.
        parts: ``(label, datasets.Dataset)`` per Arrow file (one part for a hub cache entry); row origins are
            ``"<label>:row N"``, N counted within the part.
        files: the Arrow files behind the split.
        root: the folder image paths are relative to by default (the folder given, or the snapshot's).
        column_names: the columns of the data.
        features: column name -> ``datasets`` feature.
        schema: the ``pyarrow.Schema`` of the data (for layout matching, like a parquet file's).
    """

    name: str
    split: str
    parts: tuple[tuple[str, Any], ...]
    files: tuple[Path, ...]
    root: Path
    column_names: tuple[str, ...]
    features: Mapping[str, Any]
    schema: Any


def _is_save_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(``.arrow`` data files, other data files) below ``folder``, hidden entries and sidecars left out."""
    arrow: list[Path] = []
    other: list[Path] = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            lower = name.lower()
            if name.startswith(".") or lower in _SIDECARS:
                continue
            if lower.endswith(".arrow") and not lower.startswith("cache-"):
                arrow.append(Path(top) / name)
            elif lower.endswith(_OTHER_DATA):
                other.append(Path(top) / name)
    return arrow, other


def is_hf_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read by this module: ``hf://...``, a ``save_to_disk`` folder, a ``.arrow`` file, or a
    folder holding ``.arrow`` files and no other data files. Imports nothing heavy.

    Raises:
        ValueError: a folder holding both ``.arrow`` files and ``.jsonl``/``.json``/``.parquet`` files.
    """
    text = os.fspath(path)
    if text.startswith(HF_SCHEME):
        return True
    p = Path(text)
    if p.is_file():
        return p.suffix.lower() == ".arrow"
    if not p.is_dir():
        return False
    if _is_save_to_disk(p):
        return True
    arrow, other = _walk(p)
    if arrow and other:
        raise ValueError(
            f"folder {p} holds both .arrow files (a Hugging Face data set, e.g. {arrow[0].relative_to(p)}) and "
            f"other data files (e.g. {other[0].relative_to(p)}); pass the subfolder or file of one of them"
        )
    return bool(arrow)


def choose_split(available: Sequence[str], split: str | None, what: str) -> str:
    """``split`` if ``available`` has it; for ``None``: ``train``, else the only split (see the module docstring).

    Raises:
        ValueError: an unknown split (the message lists the splits), or several splits and none called ``train``.
    """
    if split is not None:
        if split not in available:
            raise ValueError(
                f"{what} has no split {split!r}; its splits are {', '.join(available)}: pass one of them "
                "(--split / data.split)"
            )
        return split
    if "train" in available:
        return "train"
    if len(available) == 1:
        return available[0]
    raise ValueError(
        f"{what} has the splits {', '.join(available)} and none is called 'train'; choose one with --split / data.split"
    )


def folder_splits(folder: Path, files: Sequence[Path]) -> dict[str, list[Path]]:
    """The splits of the data ``files`` below ``folder`` (Arrow, JSONL, JSON or parquet files), named the way
    ``load_dataset`` names them (its file-name rules: ``data/train-00000-of-00002.parquet``, ``dev/``,
    ``train_metadata.jsonl``, ``test.jsonl``): split name -> its files, in the order of ``files``. A file whose name
    gives no split is in none; a folder without split names is one ``"train"`` split of every file."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        resolved = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except Exception:  # no file the rules recognise (EmptyDatasetError, ...): the folder is one split
        return {"train": list(files)}
    named = {s: {Path(f).resolve() for f in found} for s, found in resolved.items()}
    out = {str(s): [f for f in files if f.resolve() in members] for s, members in named.items()}
    return {s: found for s, found in out.items() if found} or {"train": list(files)}


def _label(file: Path, base: Path, prefix: str) -> str:
    if not base.is_dir():
        return prefix + file.name
    # absolute without resolving symlinks: hub snapshot files are links into the cache's blob store
    return prefix + Path(os.path.abspath(file)).relative_to(os.path.abspath(base)).as_posix()


def _from_files(files: Sequence[Path], base: Path, prefix: str, info: Any = None) -> list[tuple[str, Any]]:
    import datasets

    parts = []
    for file in files:
        try:
            part = datasets.Dataset.from_file(str(file), info=info)
        except Exception as error:  # pyarrow raises ArrowInvalid / OSError for damaged or foreign files
            raise ValueError(
                f"{file} is not an Arrow stream file as `datasets` writes it ({error}); re-create it with "
                "save_to_disk, or re-download it"
            ) from None
        parts.append((_label(file, base, prefix), part))
    return parts


def _split_of(opened: Any, split: str | None, what: str) -> tuple[str, Any]:
    """The chosen split of a ``Dataset`` or ``DatasetDict``."""
    import datasets

    if isinstance(opened, datasets.DatasetDict):
        chosen = choose_split(list(opened), split, what)
        return chosen, opened[chosen]
    own = str(opened.split) if opened.split is not None else None
    if split is not None and split != own:
        holds = f"only the split {own!r}" if own else "one unnamed split"
        raise ValueError(f"{what} holds {holds}, not {split!r}; drop --split / data.split or pass that split")
    return own or "train", opened


def _make(name: str, split: str, parts: list[tuple[str, Any]], files: Sequence[Path], root: Path) -> HFSplit:
    if not parts:
        raise ValueError(f"{name} holds no Arrow data for split {split!r}; re-create it with save_to_disk")
    first = parts[0][1]
    features = first.features
    return HFSplit(
        name, split, tuple(parts), tuple(files), root, tuple(first.column_names), dict(features), features.arrow_schema
    )


def _open_saved(folder: Path, split: str | None, prefix: str) -> HFSplit:
    import datasets

    try:
        opened = datasets.load_from_disk(str(folder), keep_in_memory=False)
    except Exception as error:  # a sidecar that does not parse, a missing shard, ...
        raise ValueError(
            f"{folder} is not a readable save_to_disk folder ({error}); re-create it with save_to_disk"
        ) from None
    chosen, dataset = _split_of(opened, split, f"save_to_disk folder {folder}")
    files = [Path(c["filename"]) for c in dataset.cache_files]
    parts = _from_files(files, folder, prefix, info=dataset.info) if files else [(prefix + chosen, dataset)]
    return _make(f"{prefix}{folder.name}[{chosen}]", chosen, parts, files, folder)


def _open_arrow(path: Path, split: str | None, prefix: str) -> HFSplit:
    if path.is_file():
        if split is not None:
            raise ValueError(f"{path} is a single Arrow file (one split); drop --split / data.split or pass the folder")
        return _make(prefix + path.name, "train", _from_files([path], path, prefix), [path], path.parent)
    arrow = _walk(path)[0]
    if not arrow:
        raise ValueError(f"folder {path} holds no .arrow data files; pass a save_to_disk folder or .arrow files")
    by_split = folder_splits(path, arrow)  # load_dataset's split naming, so splits match the hub's
    chosen = choose_split(sorted(by_split), split, f"folder {path}")
    files = by_split[chosen]
    return _make(f"{prefix}{path.name}[{chosen}]", chosen, _from_files(files, path, prefix), files, path)


def open_local(path: str | os.PathLike[str], *, split: str | None = None, prefix: str = "") -> HFSplit:
    """Open a ``save_to_disk`` folder, a ``.arrow`` file or a folder of them (see the module docstring).

    Args:
        path: the file or folder.
        split: the split to read; ``None``: ``train``, else the only one.
        prefix: put before every part label (``"hf://owner/name/"`` for a hub snapshot).

    Raises:
        ValueError: an unknown split (the message lists them), several splits without ``train`` and no
            ``split``, a damaged folder or file.
    """
    p = Path(path)
    if p.is_dir() and _is_save_to_disk(p):
        return _open_saved(p, split, prefix)
    return _open_arrow(p, split, prefix)


@contextmanager
def _offline() -> Iterator[None]:
    """The libraries' offline mode for the duration of the block: no request leaves the machine."""
    import datasets.config
    import huggingface_hub.constants as hub

    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    env = {k: os.environ.get(k) for k in keys}
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(keys, "1"))
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _parse_hub_id(source: str) -> tuple[str, str | None]:
    rest = source[len(HF_SCHEME) :].removeprefix("datasets/")
    repo, _, revision = rest.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (not revision and "@" in rest):
        raise ValueError(f"{source!r} is not a hub data set id; write hf://owner/name or hf://owner/name@revision")
    return repo, revision or None


def _not_cached(repo: str, revision: str | None) -> ValueError:
    import datasets.config
    import huggingface_hub.constants as hub

    pinned = f" --revision {revision}" if revision else ""
    return ValueError(
        f"hf://{repo}{'@' + revision if revision else ''} is not in the local Hugging Face cache (looked in "
        f"{datasets.config.HF_DATASETS_CACHE} and {hub.HF_HUB_CACHE}; HF_HOME / HF_DATASETS_CACHE / HF_HUB_CACHE "
        f"move them) and fastgrpo never downloads data: download it first with `huggingface-cli download "
        f"--repo-type dataset {repo}{pinned}` (or `hf download {repo} --repo-type dataset{pinned}`), or pass "
        "the folder it was saved to"
    )


def _hub_cache_split(dataset_dict: Any, repo: str, split: str | None) -> HFSplit:
    chosen, dataset = _split_of(dataset_dict, split, f"hf://{repo}")
    files = [Path(c["filename"]) for c in dataset.cache_files]
    label = f"hf://{repo}[{chosen}]"
    root = files[0].parent if files else Path.cwd()
    return _make(label, chosen, [(label, dataset)], files, root)


def open_hub(source: str, *, split: str | None = None) -> HFSplit:
    """Open ``hf://owner/name[@revision]`` from the local caches with the network off (module docstring).

    Raises:
        ValueError: a malformed id, a data set that is not cached (the message names the download command and
            the cache folders), an unknown split.
    """
    import datasets
    from huggingface_hub import snapshot_download

    repo, revision = _parse_hub_id(source)
    with _offline():
        if revision is None:
            try:  # the Arrow cache an earlier load_dataset(repo) left
                return _hub_cache_split(datasets.load_dataset(repo, keep_in_memory=False), repo, split)
            except (ConnectionError, FileNotFoundError):
                pass  # not there; try the hub download cache
        try:
            folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True))
        except (OSError, ValueError):  # LocalEntryNotFoundError is a FileNotFoundError
            raise _not_cached(repo, revision) from None
        if is_hf_dataset(folder):
            return open_local(folder, split=split, prefix=f"hf://{repo}/")
        try:  # parquet / JSON snapshot: converted once into the Arrow cache, then memory-mapped
            converted = datasets.load_dataset(str(folder), keep_in_memory=False)
        except Exception as error:
            raise ValueError(f"hf://{repo}: the downloaded snapshot {folder} does not load ({error})") from None
        return replace(_hub_cache_split(converted, repo, split), root=folder)


def open_hf_split(path: str | os.PathLike[str], *, split: str | None = None) -> HFSplit:
    """Open the split ``split`` of whatever :func:`is_hf_dataset` accepts (``None``: ``train``, else the only one).

    Raises:
        ValueError: see :func:`open_local` and :func:`open_hub`; also ``datasets`` not installed.
    """
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ValueError(
            f"reading {os.fspath(path)} needs the Hugging Face datasets library; install it (pip install datasets)"
        ) from None
    text = os.fspath(path)
    if text.startswith(HF_SCHEME):
        return open_hub(text, split=split)
    return open_local(text, split=split)


def _cells_table(dataset: Any, label: str) -> Any:
    """The table the image references of ``dataset`` point into (memory-mapped for data on disk)."""
    # Rows are numbered in the table's own order; a part never has an indices mapping (files are opened as they
    # are), and one would make those numbers wrong.
    if getattr(dataset, "_indices", None) is not None:
        raise ValueError(
            f"{label} is a selection of rows (an indices mapping, left by select/shuffle/filter); write it out with "
            "save_to_disk and pass that folder"
        )
    return dataset.data


def _image_cells(table: Any, column: str, start: int, stop: int) -> list[ArrowImage | str | None]:
    """Rows ``start:stop`` of the image column ``column`` of ``table`` without reading their bytes: a reference
    where a cell holds bytes, the path where it holds only a path, ``None`` where it holds neither."""
    import pyarrow.compute as pc

    cells = table.column(column).slice(start, stop - start)  # zero-copy
    present = pc.is_valid(cells).to_pylist()
    has_bytes = pc.is_valid(pc.struct_field(cells, "bytes")).to_pylist()
    paths = pc.struct_field(cells, "path").to_pylist()
    return [
        (ArrowImage(table, row, column) if data else path) if valid else None
        for row, valid, data, path in zip(range(start, stop), present, has_bytes, paths, strict=True)
    ]


def hf_rows(opened: HFSplit, layout: ColumnMap, columns: Sequence[str], where: Sequence[str]) -> Iterator[Row]:
    """One ``(origin, default id, row)`` per row of ``opened``, ``origin = "<part label>:row N"``; each row holds
    only the columns ``layout`` needs (and the ``where`` filter's), read in batches of :data:`BATCH_ROWS`.

    Image columns (``datasets.Image`` features) hold an :class:`~fastgrpo.data.lazy_images.ArrowImage` per cell with
    image bytes, the path of a cell with only a path, or ``None`` (see the module docstring); their bytes are not
    read. The other columns hold the values ``datasets`` gives.

    Args:
        opened: from :func:`open_hf_split`.
        layout: the layout of the data (chosen from ``columns``).
        columns: the column names the layout was matched against (see :attr:`HFSplit.schema`).
        where: further columns to read (the ``where`` filter's).
    """
    import datasets

    needed = sorted(set(layout.columns_needed(columns)) | {w for w in where if w in opened.column_names})
    for label, dataset in opened.parts:
        images = [c for c in needed if isinstance(dataset.features[c], datasets.Image)]
        others = dataset.select_columns([c for c in needed if c not in images])
        table = _cells_table(dataset, label) if images else None
        for start in range(0, dataset.num_rows, BATCH_ROWS):
            stop = min(start + BATCH_ROWS, dataset.num_rows)
            batch = others[start:stop] if others.column_names else {}
            batch |= {c: _image_cells(table, c, start, stop) for c in images}
            rows = zip(*(batch[c] for c in needed), strict=True)
            for number, values in zip(range(start, stop), rows, strict=True):
                yield f"{label}:row {number}", f"{label}:{number}", dict(zip(needed, values, strict=True))
