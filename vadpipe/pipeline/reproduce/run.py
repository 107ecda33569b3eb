"""Re-run a paper's table row: import the community lists, train over seeds, evaluate, report.

Layout of the results folder ``OUT`` (every file written atomically)::

    OUT/config.json             the protocol, the training config, the inputs (paths, sha256)
    OUT/data/train.csv, test.csv  the imported lists (dataset CSVs, absolute feature paths)
    OUT/gt/<file>               a copy of the GT used (its sha256 in config.json / results.json)
    OUT/seed<S>/best.pt …       each seed's checkpoints, scores.csv and metrics.json
    OUT/results.json            per-seed metrics, mean ± std, the paper's number, caveats
    OUT/table.txt               the printed table

A re-run with the same inputs reuses every finished seed (its ``metrics.json`` records the
run's fingerprint); ``force`` re-trains them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vadpipe import __version__
from vadpipe.errors import ConfigError, FeatureLoadError
from vadpipe.manifests.atomic import atomic_write_text, ensure_writable_dir
from vadpipe.manifests.datasets import DatasetRow, import_list, write_dataset
from vadpipe.pipeline.reproduce.protocols import DATASETS, METRICS, Protocol

__all__ = ["Inputs", "SeedResult", "ReproduceResult", "locate_inputs", "import_rows", "check_feature_files",
           "sha256_of", "reproduce", "table_lines", "MAX_NAMED", "DEFAULT_SEEDS"]

#: Missing feature files named in an error (the count is always given).
MAX_NAMED = 5
#: Seeds a row is trained with unless told otherwise.
DEFAULT_SEEDS = 5
#: Metrics summarised over seeds (``EvalResult`` fields).
SUMMARY_METRICS = ("auc", "ap", "pr_auc", "far")
_FAR_LABEL = "FAR@0.5 (normal videos' frames)"


@dataclass(frozen=True)
class Inputs:
    """The files one reproduction reads.

    Attributes:
        features_root: folder holding the feature files the lists name.
        train_list, test_list: the community list files.
        gt: the GT file (or mask folder).
        frames_csv: ``video,frames`` CSV of real frame counts (segment-level features).
    """

    features_root: Path
    train_list: Path
    test_list: Path
    gt: Path
    frames_csv: Path | None = None


@dataclass
class SeedResult:
    """Test-set metrics of one seed's selected checkpoint (fractions, not percent)."""

    seed: int
    auc: float
    ap: float
    pr_auc: float
    far: float
    per_class: dict[str, float]
    best_step: int
    checkpoint: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class ReproduceResult:
    """Outcome of :func:`reproduce`."""

    protocol: Protocol
    out: Path
    seeds: list[SeedResult]
    summary: dict[str, tuple[float, float]]
    per_class: dict[str, tuple[float, float]]
    caveats: list[str]
    gt_sha256: str
    reused: list[int] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        """Whether the run followed the paper's protocol (no caveats)."""
        return not self.caveats


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def locate_inputs(protocol: Protocol, features_root: str | os.PathLike, *, lists_dir: str | os.PathLike | None = None,
                  gt: str | os.PathLike | None = None, frames_csv: str | os.PathLike | None = None) -> Inputs:
    """Find the row's list and GT files: ``lists_dir`` (default: ``features_root``), then its
    ``list/`` subfolder; ``gt`` overrides the GT path.

    Raises:
        ConfigError: a missing folder or file, naming the file the row needs and where it is
            published; segment-level rows without ``frames_csv``.
    """
    root = Path(features_root)
    if not root.is_dir():
        raise ConfigError(f"--features {root} is not a folder (it must hold the {protocol.features} files)")
    lists = Path(lists_dir) if lists_dir is not None else root
    if not lists.is_dir():
        raise ConfigError(f"--lists {lists} is not a folder")
    found = {}
    for name, source in ((protocol.train_list, protocol.list_source), (protocol.test_list, protocol.list_source),
                         (protocol.gt_file, protocol.gt_source)):
        if name == protocol.gt_file and gt is not None:
            path = Path(gt)
            if not path.exists():
                raise ConfigError(f"--gt {path} does not exist")
        else:
            path = _first([lists / name, lists / "list" / name])
            if path is None:
                raise ConfigError(f"{protocol.key} needs {name} (published in {source}); put it in {lists} "
                                  "or give --lists DIR" + (" / --gt FILE" if name == protocol.gt_file else ""))
        found[name] = path
    frames = None
    if protocol.segment_frames:
        if frames_csv is None:
            raise ConfigError(f"{protocol.key}: the features are segment averages (32 a video), so evaluation "
                              "needs each test video's real frame count: give --frames CSV (columns video,frames)")
        frames = Path(frames_csv)
        if not frames.is_file():
            raise ConfigError(f"--frames {frames} is not a file")
    return Inputs(root.resolve(), found[protocol.train_list].resolve(), found[protocol.test_list].resolve(),
                  found[protocol.gt_file].resolve(), frames.resolve() if frames else None)


def import_rows(protocol: Protocol, list_path: Path, features_root: Path, split: str) -> list[DatasetRow]:
    """The rows of one list, feature paths placed under ``features_root``, ``split`` set."""
    rows = import_list(protocol.list_kind, list_path, dataset=protocol.list_dataset, feature_root=features_root)
    if protocol.feature_file:
        return [dataclasses.replace(r, split=split, feature_path=str(features_root / protocol.feature_file.format(
            video=r.video))) for r in rows]
    return [dataclasses.replace(r, split=split) for r in rows]


def _row_files(row: DatasetRow, crops: int) -> list[str]:
    if row.per_crop:
        return [row.crop_path(k) for k in range(crops)]
    return [row.feature_path]


def check_feature_files(protocol: Protocol, rows: list[DatasetRow], inputs: Inputs) -> None:
    """Every file the lists name exists under the features root, before anything trains.

    Raises:
        FeatureLoadError: the count of missing files, the first :data:`MAX_NAMED` names,
            and that nothing was trained.
    """
    missing = [f for r in rows for f in _row_files(r, protocol.crops) if not os.path.isfile(f)]
    if missing:
        n_files = sum(len(_row_files(r, protocol.crops)) for r in rows)
        names = ", ".join(Path(f).name for f in missing[:MAX_NAMED]) + (" …" if len(missing) > MAX_NAMED else "")
        raise FeatureLoadError(
            f"{len(missing)} of {n_files} feature files named in {inputs.train_list.name} / {inputs.test_list.name} "
            f"are missing under {inputs.features_root}: {names}; nothing was trained (a partial set would give "
            f"another number). Get the full {protocol.features} set, or point --features at it")


def sha256_of(path: Path) -> str:
    """sha256 of a file; of a folder, of its sorted ``name sha256`` lines (e.g. ShanghaiTech's mask folder)."""
    if path.is_dir():
        lines = "".join(f"{p.name} {sha256_of(p)}\n" for p in sorted(path.iterdir()) if p.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _copy_gt(src: Path, out: Path) -> Path:
    dst = out / "gt" / src.name
    if dst.exists() and sha256_of(dst) == sha256_of(src):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
        if dst.exists():
            shutil.rmtree(dst)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def _head_overrides(protocol: Protocol) -> tuple[str, dict[str, Any]]:
    from vadpipe.heads.base import get_head

    own = get_head(protocol.head).preset(protocol.head_preset)
    if protocol.base_head:
        base = get_head(protocol.base_head).preset(protocol.base_preset)
        return protocol.head, {"base_head": protocol.base_head, "base_overrides": base, **own, **protocol.overrides}
    return protocol.head, {**own, **protocol.overrides}


def _percent(x: float) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def reproduce(
    protocol: Protocol,
    inputs: Inputs,
    out: str | os.PathLike,
    *,
    seeds: int = DEFAULT_SEEDS,
    steps: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    force: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] = lambda _line: None,
) -> ReproduceResult:
    """Train ``protocol``'s head on the full training list with ``seeds`` seeds and evaluate each
    seed's selected checkpoint on the test list; write the results folder (module docstring).

    Args:
        protocol: the row.
        inputs: from :func:`locate_inputs`.
        out: results folder.
        seeds: seeds ``0 .. seeds-1``.
        steps: a shorter (or longer) schedule than the paper's; the result is then marked
            not comparable.
        overrides: head settings changed from the row's (an ablation; marked not comparable).
            For a refinement row (MCR) they apply to the refinement head; ``base_overrides``
            reaches the base head.
        device: ``auto``, ``cpu``, ``cuda`` …
        force: re-train seeds that a previous run finished.
        progress: training progress bars.
        echo: receives one line per finished seed.

    Raises:
        FeatureLoadError: missing, unreadable or mixed feature files (before any training).
        ConfigError: bad settings.
    """
    from vadpipe.heads.data import check_dataset_features
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.train import apply as scoring
    from vadpipe.pipeline.train.loop import TrainConfig, train

    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    out = ensure_writable_dir(out)
    train_rows = import_rows(protocol, inputs.train_list, inputs.features_root, "train")
    test_rows = import_rows(protocol, inputs.test_list, inputs.features_root, "test")
    check_feature_files(protocol, train_rows + test_rows, inputs)
    # one shape for both lists (headers only); the values: the test list's here, the training list's in train()
    shape = check_dataset_features(train_rows + test_rows, None, what=f"{protocol.key} train + test lists",
                                   values=False)
    check_dataset_features(test_rows, None, what=f"{protocol.key} test list")
    caveats = []
    if (shape["crops"], shape["dim"]) != (protocol.crops, protocol.dim):
        caveats.append(f"the features are {shape['crops']} crops x {shape['dim']}-D, the paper's {protocol.crops} x "
                       f"{protocol.dim}-D")
    if steps is not None and steps != protocol.steps:
        caveats.append(f"--steps {steps} instead of the paper's schedule")
    write_dataset(out / "data" / "train.csv", train_rows)
    write_dataset(out / "data" / "test.csv", test_rows)
    gt_copy = _copy_gt(inputs.gt, out)
    gt_sha = sha256_of(gt_copy)
    gt_spec = f"{protocol.gt_kind}:{gt_copy}"
    segments = None
    if protocol.segment_frames:  # segment scores are evaluated on each video's real frame count
        segments = scoring.frame_counts_for(test_rows, None, inputs.frames_csv)
        scoring.require_frame_counts([r.name for r in test_rows], segments)
    head, row_settings = _head_overrides(protocol)
    overrides = {**row_settings, **dict(overrides or {})}
    if overrides != row_settings:
        changed = ", ".join(f"{k}={v}" for k, v in overrides.items() if row_settings.get(k, object()) != v)
        caveats.append(f"head settings changed from the row's: {changed}")
    dev = resolve_device(device)

    def evaluate(scores: dict[str, np.ndarray]):
        return scoring.evaluate_scores(scores, gt_spec, convention=protocol.gt_convention, segments=segments)

    def test_metric(h) -> float:
        loaded = scoring.LoadedHead(h, "test", {}, "test")
        return float(getattr(evaluate(scoring.score_rows(loaded, test_rows, None, dev)), protocol.select_metric))

    fingerprint = {"row": protocol.key, "steps": steps if steps is not None else protocol.steps,
                   "features_root": str(inputs.features_root), "gt_sha256": gt_sha,
                   "train_list": sha256_of(inputs.train_list), "test_list": sha256_of(inputs.test_list),
                   "frames": sha256_of(inputs.frames_csv) if inputs.frames_csv else None,
                   "overrides": overrides, "vadpipe": __version__}
    configs, results, reused = {}, [], []
    for seed in range(seeds):
        seed_dir = out / f"seed{seed}"
        config = TrainConfig(head=head, overrides=overrides, steps=steps if steps is not None else protocol.steps,
                             eval_every=protocol.eval_every, eval_start=protocol.eval_start, seed=seed, device=device,
                             selection="test" if protocol.selection == "test" else "last", train_split="full")
        configs[seed] = dataclasses.asdict(config)
        done = _finished(seed_dir, fingerprint) if not force else None
        if done is not None:
            results.append(done)
            reused.append(seed)
            echo(f"seed {seed}: reused {seed_dir / 'metrics.json'}")
            continue
        trained = train(train_rows, [], seed_dir, config, root=None, progress=progress,
                        test_metric=test_metric if protocol.selection == "test" else None,
                        feature_meta={"backbone": protocol.backbone, "recipe": protocol.recipe, "clip_len": 16})
        loaded = scoring.load_head(trained.best_path, dev)
        scores = scoring.score_rows(loaded, test_rows, None, dev)
        scoring.write_scores_csv(seed_dir / "scores.csv", test_rows, scores, segments=segments)
        ev = evaluate(scores)
        res = SeedResult(seed, ev.auc, ev.ap, ev.pr_auc, ev.far, dict(ev.per_class), trained.best_step,
                         str(trained.best_path), list(ev.warnings))
        atomic_write_text(seed_dir / "metrics.json",
                          json.dumps({"fingerprint": fingerprint, **dataclasses.asdict(res)}, indent=2) + "\n")
        results.append(res)
        echo(f"seed {seed}: {METRICS[protocol.paper.metric]} {_percent(getattr(res, protocol.paper.metric))} "
             f"(step {res.best_step})")
    summary = {m: _mean_std([getattr(r, m) for r in results]) for m in SUMMARY_METRICS}
    classes = sorted({c for r in results for c in r.per_class})
    per_class = {c: _mean_std([r.per_class.get(c, float("nan")) for r in results]) for c in classes}
    result = ReproduceResult(protocol, out, results, summary, per_class, caveats, gt_sha, reused)
    atomic_write_text(out / "config.json", json.dumps({
        "protocol": dataclasses.asdict(protocol), "train_config": configs, "head": head, "head_overrides": overrides,
        "inputs": {k: (str(v) if v is not None else None) for k, v in dataclasses.asdict(inputs).items()},
        "gt": {"kind": protocol.gt_kind, "convention": protocol.gt_convention, "source": str(inputs.gt),
               "copy": str(gt_copy), "sha256": gt_sha},
        "vadpipe": __version__}, indent=2, default=str) + "\n")
    atomic_write_text(out / "results.json", json.dumps(_results_json(result), indent=2) + "\n")
    atomic_write_text(out / "table.txt", "\n".join(table_lines(result)) + "\n")
    return result


def _finished(seed_dir: Path, fingerprint: Mapping[str, Any]) -> SeedResult | None:
    path = seed_dir / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.pop("fingerprint", None) != json.loads(json.dumps(fingerprint)) or not Path(data["checkpoint"]).is_file():
        return None
    return SeedResult(**data)


def _results_json(result: ReproduceResult) -> dict[str, Any]:
    p = result.protocol
    return {
        "row": p.key, "method": p.method, "dataset": DATASETS[p.dataset],
        "paper": dataclasses.asdict(p.paper), "selection": p.selection_text,
        "comparable": result.comparable, "caveats": result.caveats,
        "summary": {m: {"mean": mu, "std": sd} for m, (mu, sd) in result.summary.items()},
        "per_class_auc": {c: {"mean": mu, "std": sd} for c, (mu, sd) in result.per_class.items()},
        "seeds": [dataclasses.asdict(s) for s in result.seeds],
        "gt_sha256": result.gt_sha256, "vadpipe": __version__,
    }


def table_lines(result: ReproduceResult) -> list[str]:
    """The printed table: the paper's number beside ours (mean ± std over seeds, in percent),
    both AP definitions, FAR and per-class AUC, with the protocol and every caveat."""
    p = result.protocol
    n = len(result.seeds)
    lines = [f"{p.method} on {DATASETS[p.dataset]} ({p.title}), {n} seed{'s' if n != 1 else ''}",
             f"features   {p.features} (vadpipe extract {p.recipe})",
             f"GT         {p.gt_file} ({p.gt_kind}, convention {p.gt_convention or 'default'}), "
             f"sha256 {result.gt_sha256[:16]}",
             f"length     {p.length_rule}",
             ("WARNING:   " if p.selection == "test" else "selection  ") + p.selection_text]
    lines += [f"CAVEAT:    {c}: NOT comparable with the paper" for c in result.caveats]
    lines.append(f"{'metric':<34}{'paper':>8}   ours (mean ± std)")
    labels = {**METRICS, "far": _FAR_LABEL}
    for m in SUMMARY_METRICS:
        mu, sd = result.summary[m]
        paper = f"{p.paper.value:.2f}" if m == p.paper.metric else "—"
        ours = "—" if not math.isfinite(mu) else f"{_percent(mu)} ± {_percent(sd)}"
        lines.append(f"{labels[m]:<34}{paper:>8}   {ours}")
    lines.append(f"paper: {p.paper.table}")
    for c, (mu, sd) in result.per_class.items():
        lines.append(f"  AUC {c:<16} {_percent(mu)} ± {_percent(sd)}")
    warnings = sorted({w for s in result.seeds for w in s.warnings})
    lines += [f"WARNING: {w}" for w in warnings]
    return lines
