"""Run-folder outputs: log file, per-epoch metrics (CSV and TensorBoard), environment facts."""

from __future__ import annotations

import csv
import json
import logging
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, append to ``log_file``."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    if not any(getattr(h, "_gps_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        console._gps_console = True
        root.addHandler(console)
    if log_file is not None:
        path = str(Path(log_file).resolve())
        for handler in list(root.handlers):
            if getattr(handler, "_gps_file", False):
                root.removeHandler(handler)
                handler.close()
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(formatter)
        file_handler._gps_file = True
        root.addHandler(file_handler)


def close_log_file() -> None:
    """Detach and close the run's log file handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_gps_file", False):
            root.removeHandler(handler)
            handler.close()


class MetricsWriter:
    """Append one row per epoch to ``metrics.csv`` and the same scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, epoch: int, row: dict[str, float]) -> None:
        """Record ``row`` for ``epoch`` (1-based)."""
        row = {"epoch": epoch, **row}
        rows = self._read_rows()
        rows = [r for r in rows if int(r["epoch"]) < epoch] + [row]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace("_", "/", 1), value, epoch)
            self.tb.flush()

    def _read_rows(self) -> list[dict]:
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as handle:
            return list(csv.DictReader(handle))

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def git_commit() -> str | None:
    """Return the commit of the checkout this code runs from, with '-dirty' for local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment() -> dict:
    """Return library versions, Python, platform and device facts for results.json."""
    import timm
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "platform": platform.platform(), "git_commit": git_commit(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    return info


def peak_memory_mb(device: torch.device) -> dict:
    """Return the peak memory so far: CUDA allocated (when on CUDA) and process resident memory."""
    result = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        result["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
