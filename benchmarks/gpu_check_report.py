"""Markdown for ``benchmarks/gpu_check.py``'s report, from its JSON alone.

Kept apart from the measuring code so the rendering can be re-run on a JSON that came back
from a device (``python benchmarks/gpu_check_report.py gpu_check.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(value, spec: str = ".3g", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = f" ({m['gpu_memory_gib']} GiB), CUDA {m['cuda']}, NCCL {m['nccl']}" if "cuda" in m else ""
    dry = " (DRY RUN: tiny sizes on CPU)" if report["dry_run"] else ""
    lines = [
        "# GPU check",
        "",
        f"Written by `benchmarks/gpu_check.py`{dry}.",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {m['device']}{gpu}; torch {m['torch']}, megatron-core {m['megatron_core']}, "
        f"Python {m['python']}, {m['cpu_count']} CPUs; Transformer Engine: "
        f"{m['transformer_engine']}, apex: {m['apex']}",
        f"- Date: {report['date']}; took {report['elapsed_s']:.0f} s of a "
        f"{report['budget_s']:.0f} s budget",
        "",
    ]
    sections = report["sections"]
    lines += ["## Summary", "", *render_summary(report), ""]
    for name, sec in sections.items():
        lines.append(f"## {name}: {sec['status']}")
        lines.append("")
        if sec["status"] in ("error", "skipped"):
            lines += [f"{sec.get('reason') or sec.get('error')}", ""]
            continue
        render = {"kd_loss_accuracy": _md_accuracy, "kd_loss_benchmark": _md_benchmark,
                  "salt_step": _md_steps, "fp8": _md_steps}[name]  # fmt: skip
        try:
            lines += render(sec)
        except Exception as err:  # noqa: BLE001 - the JSON has the numbers either way
            lines.append(f"(not rendered: {type(err).__name__}: {err}; see gpu_check.json)")
        lines.append("")
    return "\n".join(lines)


def render_summary(report: dict[str, Any]) -> list[str]:
    """One short table of the headline numbers (the script also prints it last)."""
    rows = []
    for name, sec in report["sections"].items():
        if sec["status"] in ("error", "skipped"):
            why = (sec.get("reason") or sec.get("error") or "").splitlines()[0][:160]
            rows.append((name, f"{sec['status']}: {why}"))
            continue
        try:
            rows += _SUMMARIES[name](sec)
        except Exception as err:  # noqa: BLE001
            rows.append((name, f"(not summarised: {type(err).__name__}: {err})"))
    return ["| check | result |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _summary_accuracy(sec) -> list[tuple[str, str]]:
    checks = sec["checks"]
    worst = {
        dtype: (
            max(c["loss_rel_err"] for c in checks if c["dtype"] == dtype),
            max(c["grad_rel_err"] for c in checks if c["dtype"] == dtype),
        )
        for dtype in dict.fromkeys(c["dtype"] for c in checks)
    }
    detail = "; ".join(f"{d}: loss {lo:.1e}, grad {g:.1e}" for d, (lo, g) in worst.items())
    failed = sum(not c["passed"] for c in checks)
    verdict = "all passed" if not failed else f"**{failed} FAILED**"
    return [(f"KD / CE+KD loss vs float64 ({len(checks)} checks)", f"{verdict}; worst {detail}")]


def _summary_benchmark(sec) -> list[tuple[str, str]]:
    index = {(c["vocab"], c["dtype"], c["impl"]): c for c in sec["cases"]}
    rows = []
    for vocab, dtype in dict.fromkeys((c["vocab"], c["dtype"]) for c in sec["cases"]):
        parts = []
        for impl in ("ours", "modelopt", "ours-fused"):
            case = index.get((vocab, dtype, impl))
            if case is None or case["status"] != "ok":
                continue
            ref = index.get((vocab, dtype, case["reference"]), {})
            if ref.get("status") != "ok":
                continue
            memory = case["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
            speed = ref["median_ms"] / case["median_ms"]
            parts.append(f"{impl} {memory:.2f}x memory, {speed:.2f}x speed vs {case['reference']}")
        tokens = sec["cases"][0]["tokens"]
        rows.append((f"loss [{tokens}, {vocab}] {dtype}", "; ".join(parts) or "no numbers"))
    return rows


def _summary_steps(sec) -> list[tuple[str, str]]:
    rows = []
    for mode, r in sec["modes"].items():
        share = "" if r["teacher_share"] is None else f", teacher {r['teacher_share']:.1%}"
        rows.append(
            (
                f"{mode} step",
                f"{r['step_ms']:.4g} ms, {r['tokens_per_s']:.4g} tokens/s, "
                f"{r['achieved_tflops']:.3g} TFLOP/s, MFU {_fmt(r['mfu'], '.1%')}{share}",
            )
        )
    for name, p in sec["pairs"].items():
        rows.append(
            (
                f"SALT / baseline ({name})",
                f"{p['salt_over_baseline']:.3f} vs FLOP-ideal {p['flop_ideal']:.3f}: "
                f"**{p['measured_over_ideal']:.3f}x of ideal**",
            )
        )
    if sec.get("note"):
        rows.append(("note", sec["note"][:200]))
    return rows


_SUMMARIES = {
    "kd_loss_accuracy": _summary_accuracy,
    "kd_loss_benchmark": _summary_benchmark,
    "salt_step": _summary_steps,
    "fp8": _summary_steps,
}


def _md_accuracy(sec) -> list[str]:
    tol = sec["tolerances"]
    padding = sec["checks"][0]["vocab"] - sec["checks"][0]["vocab_size"]
    lines = [
        "Ours vs a float64 reference, relative norm error `||ours - ref|| / ||ref||` of the "
        "per-token losses and of the student gradient (weighted random upstream gradients; "
        f"last {padding} columns are padding holding garbage). Tolerance: loss "
        f"{tol['loss_rel']['fp32']:g}; gradient {tol['grad_rel']['fp32']:g} (fp32), "
        f"{tol['grad_rel']['bf16']:g} (bf16, one rounding of the output). "
        f"**All passed: {sec['passed']}.**",
        "",
        "| loss | dtype | V | T | top-k | loss rel err | grad rel err | pass |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in sec["checks"]:
        lines.append(
            f"| {c['loss']} | {c['dtype']} | {c['vocab']} | {c['temperature']:g} | "
            f"{c['top_k'] or 'full'} | {c['loss_rel_err']:.2e} | {c['grad_rel_err']:.2e} | "
            f"{'yes' if c['passed'] else '**NO**'} |"
        )
    return lines


def _md_benchmark(sec) -> list[str]:
    lines = [
        "Forward + backward, one process, median of the timed iterations after warm-up "
        f"({sec['timer']}); peak extra memory is {sec['memory']} above the inputs (student "
        "gradient included), reset before each implementation. KD rows are compared with "
        "`naive` (fp32 `log_softmax` of both + `kl_div`), CE + KD rows with "
        "`ours-kd+megatron-ce`.",
        "",
        f"- ModelOpt `LogitsKLLoss`: {sec['modelopt'] if sec['modelopt_measured'] else 'not measured, ' + sec['modelopt']}",  # noqa: E501
        "",
        "| tokens | V | dtype | impl | ms (median) | speed vs ref | peak extra MiB | memory vs ref | loss sum |",  # noqa: E501
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    index = {(c["vocab"], c["dtype"], c["impl"]): c for c in sec["cases"]}
    for c in sec["cases"]:
        head = f"| {c['tokens']} | {c['vocab']} | {c['dtype']} | {c['impl']} |"
        if c["status"] != "ok":
            lines.append(f"{head} {c['status']}: {c.get('reason') or c.get('error')} | | | | |")
            continue
        ref = index.get((c["vocab"], c["dtype"], c["reference"]), {})
        speed = mem = ""
        if ref.get("status") == "ok":
            speed = f"{ref['median_ms'] / c['median_ms']:.2f}x"
            mem = f"{c['peak_extra_mib'] / max(ref['peak_extra_mib'], 1e-9):.2f}x"
        lines.append(
            f"{head} {c['median_ms']:.3g} | {speed} | {c['peak_extra_mib']:.0f} | {mem} | "
            f"{c['loss_sum']:.7g} |"
        )
    return lines


def _md_steps(sec) -> list[str]:
    lines = []
    cfg = sec.get("config")
    if cfg:
        lines += [
            f"`pretrain_salt.py`, one rank over {cfg['backend']}, {cfg['precision']}: student "
            f"`{cfg['student']}` ({cfg['student_params'] / 1e6:.3g}M), teacher "
            f"`{cfg['teacher']}` ({cfg['teacher_params'] / 1e6:.3g}M), vocab {cfg['vocab']}, "
            f"sequence {cfg['seq_length']}, micro-batch {cfg['micro_batch']}, global batch "
            f"{cfg['global_batch']} ({cfg['tokens_per_step']} tokens/step), {cfg['train_iters']} "
            f"steps per run logged every {cfg['log_interval']}, first interval dropped; "
            f"SALT: `--kd-alpha 0.5`, full vocabulary, T=1. Peak for MFU: "
            f"{_fmt(cfg['peak_tflops'], 'g')} TFLOP/s ({cfg['peak_source']}). MFU counts the "
            "model FLOPs done (student forward + backward, plus the teacher forward in SALT).",
            "",
        ]
    if sec.get("note"):
        lines += [f"Note: {sec['note']}", ""]
    lines += [
        "| run | step ms (median) | tokens/s | model TFLOP/s | MFU | ms at peak | teacher share | intervals |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in sec["modes"].items():
        lines.append(
            f"| {mode} | {r['step_ms']:.4g} | {r['tokens_per_s']:.4g} | "
            f"{r['achieved_tflops']:.3g} | {_fmt(r['mfu'], '.1%')} | "
            f"{_fmt(r['ideal_step_ms_at_peak'], '.4g')} | {_fmt(r['teacher_share'], '.1%')} | "
            f"{r['intervals']} |"
        )
    for name, p in sec["pairs"].items():
        lines += [
            "",
            f"- {name}: SALT / baseline step time {p['salt_over_baseline']:.3f}; FLOP-ideal "
            f"{p['flop_ideal']:.3f}; **measured / ideal {p['measured_over_ideal']:.3f}**",
        ]
    return lines


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Both files, each through a temporary name: a kill never leaves half a file."""
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=1, default=str) + "\n"),
        ("gpu_check.md", render_markdown(report) + "\n"),
    ):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/gpu_check_report.py gpu_check.json")
    print(render_markdown(json.loads(Path(sys.argv[1]).read_text())))
