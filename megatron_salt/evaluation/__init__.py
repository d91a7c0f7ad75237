"""Few-shot evaluation of checkpoints with EleutherAI's lm-evaluation-harness.

* :mod:`~megatron_salt.evaluation.results`: the ``RUN_DIR/eval/iter_NNNNNNN.json`` files
  (schema, atomic writes, which tasks are already done); no lm-eval needed to read them.
* :mod:`~megatron_salt.evaluation.harness`: lm-eval's Python API on a HuggingFace directory.
* :mod:`~megatron_salt.evaluation.runner`: runs x iterations -> export -> lm-eval -> results.
* :mod:`~megatron_salt.evaluation.local_tasks`: offline tasks built from held-out documents
  of the demo corpus (YAML templates in ``tasks/``).
* :mod:`~megatron_salt.evaluation.fewshot_report`: the few-shot part of ``compare_runs.py``.

See ``docs/evaluation.md``.
"""
