"""The published (method, dataset) rows that ``vadpipe reproduce`` re-runs, each with its protocol.

A :class:`Protocol` names everything a row depends on: the public feature set (and the
vadpipe recipe that re-makes it), the community list files and how their labels are read,
the GT file and its convention, the clip/GT length rule, the head and its paper preset,
the schedule, the checkpoint-selection rule, the metric the paper reports, and the
paper's number with its table reference. ``docs/reproduce.md`` prints the same table.

Pure data: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vadpipe.errors import ConfigError

__all__ = ["PaperNumber", "Protocol", "PROTOCOLS", "METRICS", "SELECTIONS", "DATASETS", "get_protocol",
           "protocol_rows", "protocol_table_markdown"]

#: EvalResult fields a paper's number can be: frame-level ROC-AUC, sklearn average precision,
#: ``auc(recall, precision)`` (the RTFM/MGFN code's "AP").
METRICS = {"auc": "ROC-AUC", "ap": "AP (average_precision_score)", "pr_auc": "AP (auc(recall, precision))"}

#: Checkpoint-selection rules: ``test`` = the published code's best-on-test-set choice
#: (optimistic, labelled so in every report); ``last`` = the last step of the schedule.
SELECTIONS = ("test", "last")

#: Dataset names of the rows (``vadpipe reproduce METHOD DATASET``).
DATASETS = {"ucf": "UCF-Crime", "shanghai": "ShanghaiTech", "xd": "XD-Violence"}


@dataclass(frozen=True)
class PaperNumber:
    """A number printed in a paper.

    Attributes:
        metric: key of :data:`METRICS`.
        value: in percent, as printed (``84.30``).
        table: where it is printed (paper, table, row label).
    """

    metric: str
    value: float
    table: str


@dataclass(frozen=True)
class Protocol:
    """One (method, dataset) row and how the paper (and its code, where public) made it.

    Attributes:
        method, dataset: the row (``dataset`` a key of :data:`DATASETS`).
        title: the paper.
        head: registered head trained (for a refinement method, the refinement head).
        base_head: for a refinement head (MCR), the head it refines.
        head_preset: the head's registered preset with the paper's settings (``None``: defaults).
        base_preset: the base head's preset.
        overrides: further head settings of this row.
        features: the public feature set, in words.
        backbone: the registered backbone those features come from (recorded in the checkpoints,
            so ``vadpipe score`` extracts with it).
        recipe: the ``vadpipe extract`` arguments that re-make those features.
        feature_file: file name of a video's features, ``{video}`` replaced (``None``: as the list says).
        crops, dim: crops per snippet and feature size of those features.
        list_kind: ``vadpipe manifest import`` kind of the list files.
        list_dataset: the ``rtfm-list`` labelling rule (``ucf``, ``shanghai``).
        train_list, test_list: the list files' names and where they are published.
        list_source: where the lists are published.
        gt_kind: ``--gt`` kind of the GT; ``gt_file`` its published file name.
        gt_source: where the GT is published.
        gt_convention: how annotation frame numbers are read (``None``: the kind's default).
        length_rule: clip / GT length rule, in words.
        segment_frames: scores are per segment and need each video's real frame count
            (``--frames``): Sultani's 32-segment features.
        selection: a key of :data:`SELECTIONS`.
        select_metric: the metric the published code selects on (with ``selection="test"``).
        eval_every: steps between test-set evaluations (``selection="test"``).
        eval_start: no test-set evaluation up to this step (RTFM's code: ``step > 200``).
        steps: the schedule (``None``: the head's own, from its preset).
        paper: the number the paper prints.
        ap_definition: which AP definition the paper's code computes, in words.
        notes: anything else a reviewer should know.
    """

    method: str
    dataset: str
    title: str
    head: str
    features: str
    backbone: str
    recipe: str
    crops: int
    dim: int
    list_kind: str
    train_list: str
    test_list: str
    list_source: str
    gt_kind: str
    gt_file: str
    gt_source: str
    length_rule: str
    selection: str
    paper: PaperNumber
    ap_definition: str
    list_dataset: str = "ucf"
    gt_convention: str | None = None
    base_head: str | None = None
    head_preset: str | None = None
    base_preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    segment_frames: bool = False
    select_metric: str = "auc"
    eval_every: int = 5
    eval_start: int = 0
    steps: int | None = None
    feature_file: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        for m in (self.paper.metric, self.select_metric):
            if m not in METRICS:
                raise ConfigError(f"metric must be one of {sorted(METRICS)}, got {m!r}")

    @property
    def key(self) -> str:
        return f"{self.method} {self.dataset}"

    @property
    def selection_text(self) -> str:
        if self.selection == "test":
            after = f" after step {self.eval_start}" if self.eval_start else ""
            return (f"best {METRICS[self.select_metric]} on the TEST set every {self.eval_every} steps{after}, "
                    "as the published code (optimistic)")
        return "last step of the schedule (no test-set selection)"


#: Every row ``vadpipe reproduce`` knows, keyed ``(method, dataset)``.
PROTOCOLS: dict[tuple[str, str], Protocol] = {}


def _add(p: Protocol) -> None:
    PROTOCOLS[(p.method, p.dataset)] = p


_RTFM = "Tian et al., RTFM, ICCV 2021"
_MGFN = "Chen et al., MGFN, AAAI 2023"
_LANET = "LA-Net + DDL (dynamics-ranking loss)"
_SACRF = "Purwanto et al., Dance with Self-Attention (SA-CRF), ICCV 2021"
_MCR = "Gong et al., Multi-Scale Continuity-Aware Refinement (MCR), ICME 2022"
_SULTANI = "Sultani et al., Real-world Anomaly Detection in Surveillance Videos, CVPR 2018"

_RTFM_LISTS = "github.com/tianyu0207/RTFM, list/"
_XD_LISTS = "github.com/Roc-Ng/XDVioDet, list/"
_UCF_GT = "UCF-Crime release (github.com/WaqasSultani/AnomalyDetectionCVPR2018)"
_UCF_LISTS = "Anomaly_Train.txt: UCF-Crime release; Anomaly_Test.txt: github.com/nwpu-zxr/VadCLIP, list/"
_XD_GT = "XD-Violence release (roc-ng.github.io/XD-Violence; copy in github.com/nwpu-zxr/VadCLIP, list/)"
_SH_GT = "github.com/tianyu0207/RTFM, list/ (test_frame_mask/: the per-frame masks)"

_UCF_I3D = "RTFM's UCF-Crime I3D-ResNet-50 10-crop features (<video>_i3d.npy, [T, 10, 2048])"
_SH_I3D = "RTFM's ShanghaiTech I3D-ResNet-50 10-crop features (<video>_i3d.npy, [T, 10, 2048])"
_XD_I3D = "Wu et al.'s XD-Violence Inception-I3D RGB 5-crop features (<name>__<k>.npy, [T, 1024] each)"
_TRN = "relation-aware ResNet-50 TRN patch features made with vadpipe (<video>_trn.npy, [T, 14, 2048]); no public set"

_UCF_LEN = "T x 16 frames per video (16-frame clips, tail dropped); GT 0-based, inclusive ends (RTFM make_gt_ucf.py)"
_SH_LEN = ("T x 16 frames per video (last partial clip padded); each mask padded with its last label to T x 16 "
           "(RTFM make_gt_sh.py, gt-sh.npy)")
_XD_LEN = ("T x 16 frames per video; GT 0-based, end exclusive; Wu's make_gt.py trims a video to "
           "16 x floor((n - 1) / 16) frames, T x 16 for features made from n - 1 frames")
_PR_AUC = "auc(recall, precision) over frames (the official code's 'AP')"
_NO_AP = "not reported for this row (both definitions are printed)"

for _p in (
    Protocol(
        method="rtfm", dataset="ucf", title=_RTFM, head="rtfm", features=_UCF_I3D,
        backbone="i3d-r50-caffe2", recipe="--preset rtfm-i3d-r50-10crop", crops=10, dim=2048, list_kind="rtfm-list",
        train_list="ucf-i3d.list", test_list="ucf-i3d-test.list", list_source=_RTFM_LISTS,
        gt_kind="ucf", gt_file="Temporal_Anomaly_Annotation.txt", gt_source=_UCF_GT, gt_convention="rtfm",
        length_rule=_UCF_LEN, selection="test", select_metric="auc", eval_every=5, eval_start=200, steps=15000,
        paper=PaperNumber("auc", 84.03, "RTFM paper Table 2, row 'Ours | I3D RGB' (LA-Net's Table 1 quotes 84.30)"),
        ap_definition=_NO_AP,
        notes="The official code's settings (option.py, main.py): Adam lr 1e-3, weight decay 5e-3, 32 normal + 32 "
              "abnormal videos a step, 15000 steps, 32 segments, k = 3; the paper prints weight decay 5e-4 and "
              "50 epochs (vadpipe train --head rtfm --preset paper)."),
    Protocol(
        method="rtfm", dataset="shanghai", title=_RTFM, head="rtfm", features=_SH_I3D,
        backbone="i3d-r50-caffe2", recipe="--preset rtfm-i3d-r50-10crop --tail pad", crops=10, dim=2048,
        list_kind="rtfm-list",
        list_dataset="shanghai", train_list="shanghai-i3d-train-10crop.list",
        test_list="shanghai-i3d-test-10crop.list", list_source=_RTFM_LISTS,
        gt_kind="sh-npy", gt_file="gt-sh.npy", gt_source=_RTFM_LISTS, length_rule=_SH_LEN,
        selection="test", select_metric="auc", eval_every=5, eval_start=200, steps=15000,
        paper=PaperNumber("auc", 97.21, "RTFM paper Table 1, row 'Ours | I3D-RGB'"), ap_definition=_NO_AP,
        notes="The official code's defaults are this dataset's (--dataset shanghai, list/gt-sh.npy); Zhong et al.'s "
              "weakly-supervised split (238 train, 199 test videos)."),
    Protocol(
        method="rtfm", dataset="xd", title=_RTFM, head="rtfm", overrides={"lr": 1e-4}, features=_XD_I3D,
        backbone="i3d", recipe="--preset xd-i3d-5crop", crops=5, dim=1024, list_kind="xd-list", train_list="rgb.list",
        test_list="rgb_test.list", list_source=_XD_LISTS, gt_kind="xd", gt_file="annotations.txt",
        gt_source=_XD_GT, gt_convention="vadclip", length_rule=_XD_LEN, selection="test", select_metric="pr_auc",
        eval_every=5, eval_start=200, steps=15000,
        paper=PaperNumber("pr_auc", 77.81, "RTFM paper Table 3, row 'Ours | I3D RGB'"), ap_definition=_PR_AUC,
        notes="RTFM released no XD-Violence code (its issues #43-#45): lr 1e-4 is the paper's (Sec. 4.2); the rest "
              "is the UCF-Crime code path; selecting on the test AP is vadpipe's reading."),
    Protocol(
        method="mgfn", dataset="ucf", title=_MGFN, head="mgfn", features=_UCF_I3D,
        backbone="i3d-r50-caffe2", recipe="--preset rtfm-i3d-r50-10crop", crops=10, dim=2048, list_kind="rtfm-list",
        train_list="ucf-i3d.list", test_list="ucf-i3d-test.list", list_source=_RTFM_LISTS,
        gt_kind="ucf", gt_file="Temporal_Anomaly_Annotation.txt", gt_source=_UCF_GT, gt_convention="rtfm",
        length_rule=_UCF_LEN, selection="test", select_metric="auc", eval_every=50, steps=50000,
        paper=PaperNumber("auc", 86.98, "MGFN paper Table 1, row 'MGFN(Ours) | I3D-RGB'"), ap_definition=_NO_AP,
        notes="The official code's settings: 1000 epochs of 800 // 16 = 50 steps (16 + 16 videos), the test set "
              "evaluated once an epoch; its loaders do not shuffle (vadpipe draws balanced random batches). MGFN "
              "links its own copy of the ten-crop I3D features; identity with RTFM's is not verified."),
    Protocol(
        method="mgfn", dataset="xd", title=_MGFN, head="mgfn", features=_XD_I3D, backbone="i3d",
        recipe="--preset xd-i3d-5crop", crops=5, dim=1024, list_kind="xd-list", train_list="rgb.list",
        test_list="rgb_test.list", list_source=_XD_LISTS, gt_kind="xd", gt_file="annotations.txt",
        gt_source=_XD_GT, gt_convention="vadclip",
        length_rule=_XD_LEN, selection="test", select_metric="pr_auc", eval_every=128, steps=128000,
        paper=PaperNumber("pr_auc", 79.19, "MGFN paper Table 2, row 'MGFN(Ours) | I3D-RGB' (80.11 is VideoSwin-RGB)"),
        ap_definition=_PR_AUC,
        notes="MGFN's released XD-Violence branch does not run (undefined option, 10 crops hard-coded): vadpipe "
              "applies the UCF-Crime protocol to XD's videos, 1000 epochs of 2049 // 16 = 128 steps, best test AP "
              "once an epoch (the code's XD rule)."),
    Protocol(
        method="sultani", dataset="ucf", title=_SULTANI, head="sultani",
        features="Sultani et al.'s C3D fc6 32-segment features (<video>.txt, 32 x 4096, L2-normalised)",
        backbone="c3d", recipe="--preset sultani-c3d, then vadpipe features segments", crops=1, dim=4096,
        list_kind="ucf-video-list", train_list="Anomaly_Train.txt", test_list="Anomaly_Test.txt",
        list_source=_UCF_LISTS, gt_kind="ucf", gt_file="Temporal_Anomaly_Annotation.txt", gt_source=_UCF_GT,
        gt_convention="sultani", segment_frames=True,
        length_rule="the 32 segment scores spread over the 16-frame clips of each video's real frame count "
                    "(round(linspace(1, C, 33)) bins), the clips and frames no bin covers filled as "
                    "Evaluate_Anomaly_Detector.m does; GT 1-based, inclusive ends",
        selection="last", steps=20000,
        paper=PaperNumber("auc", 75.41, "as reported in the RTFM paper Table 2, row 'Sultani et al. [51] | C3D RGB'"),
        ap_definition=_NO_AP,
        notes="The official code's settings (TrainingAnomalyDetector_public.py): Adagrad lr 0.01, 30 + 30 videos, "
              "20000 iterations, no test-set selection."),
    Protocol(
        method="lanet", dataset="ucf", title=_LANET, head="lanet", head_preset="ucf", features=_UCF_I3D,
        backbone="i3d-r50-caffe2", recipe="--preset rtfm-i3d-r50-10crop", crops=10, dim=2048, list_kind="rtfm-list",
        train_list="ucf-i3d.list", test_list="ucf-i3d-test.list", list_source=_RTFM_LISTS,
        gt_kind="ucf", gt_file="Temporal_Anomaly_Annotation.txt", gt_source=_UCF_GT, gt_convention="rtfm",
        length_rule=_UCF_LEN, selection="last",
        paper=PaperNumber("auc", 85.12, "LA-Net paper Table 1, row 'DDL (Ours) | I3D RGB'"), ap_definition=_NO_AP,
        notes="No public code; the paper names no UCF-Crime feature set, GT convention or selection rule: vadpipe "
              "uses RTFM's features, lists and GT convention and keeps the last step (50 epochs, Sec. 4.2)."),
    Protocol(
        method="lanet", dataset="xd", title=_LANET, head="lanet", head_preset="xd", features=_XD_I3D,
        backbone="i3d", recipe="--preset xd-i3d-5crop", crops=5, dim=1024, list_kind="xd-list", train_list="rgb.list",
        test_list="rgb_test.list", list_source=_XD_LISTS, gt_kind="xd", gt_file="annotations.txt",
        gt_source=_XD_GT, gt_convention="vadclip", length_rule=_XD_LEN, selection="last",
        paper=PaperNumber("pr_auc", 80.72, "LA-Net paper Table 2, row 'DDL (Ours) | I3D RGB'"),
        ap_definition=_PR_AUC + ", as Wu et al.'s code the paper follows ([13])",
        notes="No public code; no selection rule stated: the last step of 50 epochs is kept."),
    Protocol(
        method="sacrf", dataset="ucf", title=_SACRF, head="sacrf", features=_TRN, backbone="resnet50-trn",
        recipe="--backbone resnet50-trn",
        crops=14, dim=2048, list_kind="ucf-video-list", train_list="Anomaly_Train.txt", test_list="Anomaly_Test.txt",
        list_source=_UCF_LISTS, feature_file="{video}_trn.npy", gt_kind="ucf",
        gt_file="Temporal_Anomaly_Annotation.txt", gt_source=_UCF_GT, gt_convention="sultani",
        length_rule="T x 16 frames per video; GT 1-based, inclusive ends (the paper follows Sultani's evaluation)",
        selection="last",
        paper=PaperNumber("auc", 85.00, "SA-CRF paper Table 3, row 'Ours | Relation-aware'"), ap_definition=_NO_AP,
        notes="No public code or features: the features are vadpipe's relation-aware extractor (G = 14 patch "
              "nodes); head settings of Sec. 4 (Adam lr 1e-4, weight decay 1e-5, 50 epochs); last step kept."),
    Protocol(
        method="sacrf", dataset="shanghai", title=_SACRF, head="sacrf", features=_TRN,
        backbone="resnet50-trn", recipe="--backbone resnet50-trn --tail pad", crops=14, dim=2048, list_kind="rtfm-list",
        list_dataset="shanghai", train_list="shanghai-i3d-train-10crop.list",
        test_list="shanghai-i3d-test-10crop.list", list_source=_RTFM_LISTS, feature_file="{video}_trn.npy",
        gt_kind="sh-npy", gt_file="gt-sh.npy", gt_source=_RTFM_LISTS, length_rule=_SH_LEN, selection="last",
        steps=250,
        paper=PaperNumber("auc", 96.85, "SA-CRF paper Table 4, row 'Ours | Relation-aware'"), ap_definition=_NO_AP,
        notes="No public code or features; Zhong et al.'s split (RTFM's lists name its videos); 50 epochs of "
              "175 // 32 = 5 steps (32 + 32 videos); last step kept."),
    Protocol(
        method="mcr", dataset="shanghai", title=_MCR, head="mcr", base_head="rtfm", features=_SH_I3D,
        backbone="i3d-r50-caffe2", recipe="--preset rtfm-i3d-r50-10crop --tail pad", crops=10, dim=2048,
        list_kind="rtfm-list",
        list_dataset="shanghai", train_list="shanghai-i3d-train-10crop.list",
        test_list="shanghai-i3d-test-10crop.list", list_source=_RTFM_LISTS,
        gt_kind="sh-npy", gt_file="gt-sh.npy", gt_source=_RTFM_LISTS, length_rule=_SH_LEN, selection="last",
        paper=PaperNumber("auc", 94.92, "MCR paper, abstract (its results table is not in the available text)"),
        ap_definition=_NO_AP,
        notes="The available paper text gives K = 32, N = 3 scales and the loss, but no base network, features, "
              "optimiser or schedule: every such setting is vadpipe's (RTFM base head on RTFM's features)."),
):
    _add(_p)


def get_protocol(method: str, dataset: str) -> Protocol:
    """The row ``(method, dataset)``.

    Raises:
        ConfigError: an unknown row, listing the known ones.
    """
    try:
        return PROTOCOLS[(method, dataset)]
    except KeyError:
        known = ", ".join(f"{m} {d}" for m, d in PROTOCOLS)
        raise ConfigError(f"no published row {method} {dataset} to reproduce; known rows: {known}") from None


def protocol_rows() -> list[dict[str, str]]:
    """The protocol table (one dict per row), as ``vadpipe reproduce --list`` and the docs print it."""
    return [{
        "row": p.key, "paper": f"{METRICS[p.paper.metric]} {p.paper.value:.2f} ({p.paper.table})",
        "features": f"{p.features}; made by vadpipe extract {p.recipe}",
        "gt": f"{p.gt_file} ({p.gt_kind}, {p.gt_convention or 'default'})",
        "length": p.length_rule, "ap": p.ap_definition, "selection": p.selection_text,
    } for p in PROTOCOLS.values()]


def protocol_table_markdown() -> str:
    """The protocol table of ``docs/reproduce.md`` (a test keeps the two equal)."""
    head = ("| row | paper's number | features (`vadpipe extract ...`) | lists | GT (kind, convention) | "
            "clip / GT length rule | AP definition | checkpoint selection | schedule | notes |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for p in PROTOCOLS.values():
        schedule = f"{p.steps} steps" if p.steps else "the head's preset (epochs)"
        settings = ", ".join(f"{k}={v}" for k, v in p.overrides.items())
        preset = " ".join(x for x in (f"--preset {p.head_preset}" if p.head_preset else "",
                                      f"(base head {p.base_head})" if p.base_head else "", settings) if x)
        cells = [f"`vadpipe reproduce {p.key}` (head {p.head}{' ' + preset if preset else ''})",
                 f"{METRICS[p.paper.metric]} **{p.paper.value:.2f}**: {p.paper.table}",
                 f"{p.features}; `{p.recipe}`", f"{p.train_list}, {p.test_list} ({p.list_source})",
                 f"{p.gt_file} ({p.gt_kind}, {p.gt_convention or 'default'}; {p.gt_source})", p.length_rule,
                 p.ap_definition, p.selection_text, schedule, p.notes]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("<", "&lt;") for c in cells) + " |")
    return "\n".join(lines) + "\n"
