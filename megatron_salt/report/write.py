"""``{prefix}.md`` and ``{prefix}.png`` (and the few-shot section) for ``tools/compare_runs.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from megatron_salt.report.compare import compare
from megatron_salt.report.files import atomic_write, save_figure
from megatron_salt.report.markdown import markdown_report
from megatron_salt.report.plot import plot_comparison
from megatron_salt.report.run import ReportError, Run


def write_report(
    runs: Sequence[Run],
    baseline: Run,
    prefix: str | Path,
    *,
    title: str,
    overhead=None,
    extra_sections: Sequence[str] = (),
) -> tuple[Path, Path, str]:
    """Write ``{prefix}.png`` and ``{prefix}.md``; return their paths and the markdown.

    ``extra_sections`` (markdown) go at the end, e.g. the demo's machine and stage times.

    Runs with few-shot results (``RUN_DIR/eval/``, from ``tools/evaluate.py``) add a
    few-shot section and ``{prefix}_fewshot.png`` (:mod:`megatron_salt.evaluation.fewshot_report`).
    ``overhead`` (a :class:`megatron_salt.compute_cost.OverheadCost`) adds the compute-to-reach
    section with the teacher's pretraining and the scoring cost counted.
    """
    from megatron_salt.evaluation.fewshot_report import fewshot_report, render_fewshot
    from megatron_salt.evaluation.results import EvalError

    if not any(run is baseline for run in runs):
        runs = [baseline, *runs]
    rows = compare(runs, baseline)
    try:  # read (and check) the few-shot results before writing anything
        fewshot = fewshot_report(
            [(r.name, r.run_dir) for r in runs],
            next(i for i, r in enumerate(runs) if r is baseline),
        )
    except EvalError as err:
        raise ReportError(str(err)) from None
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    png, md = prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".md")
    text = markdown_report(rows, baseline, title=title, png_name=png.name)
    plot_comparison(rows, baseline, png, title=title)
    section = render_fewshot(
        fewshot, prefix.with_name(prefix.name + "_fewshot.png"), title=title, save=save_figure
    )
    if overhead is not None:
        from megatron_salt.compute_cost import cost_section

        section = (section + "\n" if section else "") + cost_section(rows, overhead)
    for part in (section, *extra_sections):
        if part:
            text += "\n" + part
    atomic_write(md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return png, md, text
