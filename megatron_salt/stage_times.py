"""Where a pipeline's wall-clock went, and on what machine: the demo report's last section.

``examples/tiny_cpu/time_stage.sh`` appends one ``NAME<TAB>SECONDS`` line per finished stage
to a file; ``# KEY<TAB>VALUE`` lines carry settings of the whole run (the precision). Times
only compare on one machine, so the section names the CPU, its vector extensions (bf16 in
hardware or not decides the demo's precision) and the threads torch used.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from megatron_salt.report import format_duration

#: CPU flags that decide CPU training speed (fp32 vector width, bf16 in hardware).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


class StageTimesError(ValueError):
    """A malformed stage-times file (named with its line)."""


@dataclass
class StageTimes:
    stages: dict[str, float] = field(default_factory=dict)  # name -> seconds, in run order
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


def read_stage_times(path: str | Path) -> StageTimes:
    """Parse a stage-times file; a stage timed twice (a resumed demo) keeps its last time."""
    times = StageTimes()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("\t")
        if key.startswith("#"):
            times.settings[key.lstrip("# ").strip()] = value.strip()
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not sep or not key or seconds != seconds or seconds < 0:
            raise StageTimesError(f"{path}:{number}: expected 'NAME<TAB>SECONDS', got {line!r}")
        times.stages.pop(key, None)
        times.stages[key] = seconds
    return times


def describe_machine() -> dict[str, str]:
    """CPU model, usable cores, speed-relevant flags, torch threads and library versions."""
    import torch

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        mcore = version("megatron-core")
    except Exception:  # noqa: BLE001 - only a description
        mcore = "not installed"
    present = [f for f in SPEED_FLAGS if f in flags]
    return {
        "cpu": model,
        "cores": str(len(os.sched_getaffinity(0))),
        "vector extensions": ", ".join(present) or "none of " + ", ".join(SPEED_FLAGS),
        "bf16 in hardware": "yes" if {"avx512_bf16", "amx_bf16"} & flags else "no",
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "megatron-core": mcore,
    }


def render_stage_times(times: StageTimes, machine: dict[str, str]) -> str:
    """The markdown section: the machine, then one row per stage and the total."""
    lines = ["## Machine and time per stage", ""]
    lines += [f"- {key}: {value}" for key, value in {**machine, **times.settings}.items()]
    lines += ["", "| stage | wall-clock | share |", "|---|---|---|"]
    total = times.total_s
    for name, seconds in times.stages.items():
        share = f"{seconds / total:.0%}" if total > 0 else "—"
        lines.append(f"| {name} | {format_duration(seconds)} | {share} |")
    lines.append(f"| **total** | **{format_duration(total)}** | |")
    lines += [
        "",
        "Stages that were already done when the demo was rerun keep the time of the run that "
        "did them; wall-clock includes start-up (imports), evaluation and checkpointing.",
    ]
    return "\n".join(lines) + "\n"
