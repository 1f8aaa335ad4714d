"""FDDB (public folds) detection accuracy of ``detect_faces`` over a few score thresholds.

One detector pass at the lowest threshold serves every row (see
``moodlens.evaluation.detection.predict_fddb``). Criterion: IoU >= 0.4 between the
detector box and the bounding box of FDDB's forehead-to-chin ellipse.

    python benchmarks/detection_fddb.py [--root ../shared/data/fddb_public]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moodlens.evaluation.detection import default_threshold, predict_fddb, summarise

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fddb_public"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--iou", type=float, default=0.4)
    args = p.parse_args()

    default = default_threshold()
    rows = predict_fddb(args.root, threshold=min(args.thresholds))
    table = Table(title=f"FDDB {args.root.name}: IoU >= {args.iou} vs ellipse bounding box")
    for col in ("threshold", "recall", "FP / image", "images", "faces", "ms / image"):
        table.add_column(col, justify="right")
    for t in sorted(args.thresholds):
        s = summarise(rows, t, args.iou)
        mark = " (default)" if abs(t - default) < 1e-9 else ""
        table.add_row(f"{t:.2f}{mark}", f"{s['recall']:.3f}", f"{s['fp_per_image']:.3f}",
                      str(s["images"]), str(s["faces"]), f"{s['ms_per_image']:.1f}")
    Console().print(table)
    print("ms / image: one detector pass at the lowest threshold, CPU, includes the scale pyramid")


if __name__ == "__main__":
    main()
