"""What the CLI hands a runner besides its config."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.hardware import Hardware
from llmlab.tracking import RunDir, Tracker


@dataclass
class RunContext:
    hw: Hardware
    run_dir: RunDir
    tracker: Tracker
