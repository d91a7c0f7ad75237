"""Compare SALT runs with their baseline (``tools/compare_runs.py``; docs/compare_runs.md).

One module per job:

- :mod:`~megatron_salt.report.run`: what the comparison knows of a run (:class:`Run`);
- :mod:`~megatron_salt.report.read`: reading runs from ``metrics.jsonl`` or wandb;
- :mod:`~megatron_salt.report.compare`: where each run reaches the baseline's final loss;
- :mod:`~megatron_salt.report.markdown`, :mod:`~megatron_salt.report.plot`: rendering;
- :mod:`~megatron_salt.report.write`: the ``.md`` and ``.png`` files, written atomically.
"""

from megatron_salt.report.compare import (
    Comparison,
    comparability_warnings,
    compare,
    disambiguate_names,
    first_reach,
    pick_baseline,
)
from megatron_salt.report.markdown import (
    TABLE_HEADER,
    format_duration,
    headline,
    markdown_report,
    markdown_table,
    table_rows,
)
from megatron_salt.report.plot import plot_comparison
from megatron_salt.report.read import load_run, read_metrics_jsonl, read_wandb_run
from megatron_salt.report.run import SETTINGS_KEYS, Point, ReportError, Run
from megatron_salt.report.write import write_report

__all__ = [
    "SETTINGS_KEYS",
    "TABLE_HEADER",
    "Comparison",
    "Point",
    "ReportError",
    "Run",
    "comparability_warnings",
    "compare",
    "disambiguate_names",
    "first_reach",
    "format_duration",
    "headline",
    "load_run",
    "markdown_report",
    "markdown_table",
    "pick_baseline",
    "plot_comparison",
    "read_metrics_jsonl",
    "read_wandb_run",
    "table_rows",
    "write_report",
]
