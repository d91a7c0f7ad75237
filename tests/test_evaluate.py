"""tools/evaluate.py and the offline tasks: real pretrain_salt.py runs, the real HF export,
lm-eval's real API against lm-eval's own command line, compare_runs on the results it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from salt_runs import REPO, pretrain_on, salt_args, student_args

pytest.importorskip("lm_eval")

from megatron_salt.data.demo_corpus import build_demo_corpus, stdlib_module_names  # noqa: E402
from megatron_salt.data.pile import expand_inputs  # noqa: E402
from megatron_salt.evaluation.local_tasks import (  # noqa: E402
    CorpusIndex,
    LocalTaskConfig,
    build_local_tasks,
)
from megatron_salt.evaluation.results import read_result  # noqa: E402
from megatron_salt.testing import free_port  # noqa: E402

TASKS = "salt_lastword,salt_nextline"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
EVAL_ARGS = ["--num-fewshot", "1", "--limit", "8", "--batch-size", "4"]


def _run(argv: list[str], **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()), **OFFLINE, **env)
    return subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A slice of the demo corpus: 5 pydoc pages and 20 source files trained on."""
    out = tmp_path_factory.mktemp("eval_corpus") / "corpus"
    build_demo_corpus(
        str(out),
        num_shards=1,
        subsets=("StdlibDocs", "StdlibSource"),
        max_docs_per_subset=20,
        pydoc_modules=stdlib_module_names()[:5],
        processes=1,
    )
    return out


@pytest.fixture(scope="module")
def eval_tasks(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_tasks") / "tasks"
    result = _run(
        ["tools/make_eval_tasks.py", "--corpus", str(corpus), "--out", str(out),
         "--docs-per-subset", "30", "--processes", "1"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "salt_lastword:" in result.stdout and "salt_nextline:" in result.stdout
    return out


@pytest.fixture(scope="module")
def evaluated_runs(tiny_data, checkpoints, eval_tasks, tmp_path_factory):
    """A baseline and a SALT student, 4 steps each, saved at 2 and 4, evaluated by the CLI."""
    root = tmp_path_factory.mktemp("eval_runs")
    runs = {"baseline": root / "baseline", "salt": root / "salt"}
    steps = ["--train-iters", "4", "--save-interval", "2", "--eval-interval", "2"]
    pretrain_on(1, student_args(tiny_data, checkpoints, runs["baseline"], *steps))
    pretrain_on(1, salt_args(tiny_data, checkpoints, runs["salt"], *steps, "--kd-iters", "2"))
    result = _run(
        ["tools/evaluate.py", "--load", *map(str, runs.values()), "--iterations", "all",
         "--tasks", TASKS, "--include-path", str(eval_tasks), *EVAL_ARGS]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return runs, result


def test_local_tasks_are_held_out_and_deterministic(corpus, eval_tasks, tmp_path):
    manifest = json.loads((eval_tasks / "tasks.json").read_text())
    trained = {
        json.loads(line)["meta"]["source"]
        for line in _corpus_lines(corpus)  # the corpus' own record of each document
    }
    held_out = manifest["held_out"]["StdlibDocs"] + manifest["held_out"]["StdlibSource"]
    assert held_out and not set(held_out) & trained
    assert manifest["corpus"]["docs"] == {"StdlibDocs": 5, "StdlibSource": 20}

    prose = CorpusIndex.read(corpus).prose
    for task in ("salt_lastword", "salt_nextline"):
        yaml = (eval_tasks / f"{task}.yaml").read_text()
        assert f'"{eval_tasks.resolve()}/{task}.test.jsonl"' in yaml and "@DATA_DIR@" not in yaml
        tests = [json.loads(x) for x in (eval_tasks / f"{task}.test.jsonl").read_text().split("\n")
                 if x]  # fmt: skip
        fewshot = [json.loads(x) for x in (eval_tasks / f"{task}.fewshot.jsonl").read_text()
                   .split("\n") if x]  # fmt: skip
        assert tests and fewshot and len(tests) == manifest["tasks"][task]["test"]
        # A few-shot prompt never shows a test document.
        assert not {e["source"] for e in tests} & {e["source"] for e in fewshot}
        assert {e["source"] for e in tests + fewshot} <= set(held_out)
    for ex in (json.loads(x) for x in (eval_tasks / "salt_lastword.test.jsonl").open()):
        assert ex["target"].isalpha() and f"{ex['context']} {ex['target']}" not in prose
    for ex in (json.loads(x) for x in (eval_tasks / "salt_nextline.test.jsonl").open()):
        assert len(ex["choices"]) == 4 == len({c.strip() for c in ex["choices"]})
        assert 0 <= ex["gold"] < 4

    again = tmp_path / "again"
    build_local_tasks(corpus, again, LocalTaskConfig(docs_per_subset=30), processes=1)
    for name in os.listdir(eval_tasks):
        if name.endswith(".jsonl"):
            assert (again / name).read_bytes() == (eval_tasks / name).read_bytes(), name


def _corpus_lines(corpus: Path):
    import io

    import zstandard

    for shard in expand_inputs([str(corpus)]):
        with open(shard, "rb") as raw:
            yield from io.TextIOWrapper(
                zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8"
            )


def test_evaluate_equals_lm_eval_command_line(evaluated_runs, eval_tasks, tmp_path):
    runs, result = evaluated_runs
    salt = runs["salt"]
    assert sorted(p.name for p in (salt / "eval").iterdir()) == [
        "iter_0000002.json",
        "iter_0000004.json",
    ]
    # Progress: which run and iteration, elapsed, ETA.
    assert f"[4/4] {salt} iter 4" in result.stderr and "ETA" in result.stderr
    ours = read_result(salt / "eval" / "iter_0000004.json")

    hf = tmp_path / "hf"
    export = _run(["tools/convert_checkpoint.py", "export-hf", "--load", str(salt),
                   "--iteration", "4", "--hf-dir", str(hf)])  # fmt: skip
    assert export.returncode == 0, export.stderr
    out = tmp_path / "lm_eval_out"
    cli = _run(
        ["-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={hf},dtype=float32",
         "--tasks", TASKS, "--include_path", str(eval_tasks), "--num_fewshot", "1",
         "--limit", "8", "--batch_size", "4", "--device", "cpu", "--output_path", str(out)]
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    theirs = json.loads(results_file.read_text())
    for task in TASKS.split(","):
        entry = ours["tasks"][task]
        expected = {
            key.split(",")[0]: value
            for key, value in theirs["results"][task].items()
            if key.endswith(",none") and isinstance(value, float)
        }
        assert expected and entry["metrics"] == expected, task
        assert entry["version"] == theirs["versions"][task]
        assert entry["num_fewshot"] == theirs["n-shot"][task] == 1
        samples = entry["samples"]
        assert samples == theirs["n-samples"][task]
        assert samples["effective"] == min(8, samples["original"]) > 1
        assert entry["limit"] == 8 and entry["lm_eval_version"] == theirs["lm_eval_version"]
    assert ours["tasks"]["salt_nextline"]["primary_metric"] == "acc"
    assert set(ours["tasks"]["salt_lastword"]["metrics"]) == {
        "acc", "acc_stderr", "perplexity", "perplexity_stderr"
    }  # fmt: skip


def test_evaluate_resumes_and_reevaluates_changed_settings(evaluated_runs, eval_tasks, tmp_path):
    runs = {name: tmp_path / name for name in evaluated_runs[0]}
    for name, run in evaluated_runs[0].items():
        shutil.copytree(run, runs[name])
    before = {p: p.read_bytes() for r in runs.values() for p in (r / "eval").iterdir()}
    argv = ["tools/evaluate.py", "--load", *map(str, runs.values()), "--iterations", "all",
            "--tasks", TASKS, "--include-path", str(eval_tasks), *EVAL_ARGS]  # fmt: skip
    again = _run(argv)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 to do, 4 done already" in again.stderr
    assert {p: p.read_bytes() for p in before} == before

    # Another --limit is another evaluation: redone, only where asked (the latest iteration).
    base = runs["baseline"]
    argv = ["tools/evaluate.py", "--load", str(base), "--tasks", "salt_nextline",
            "--include-path", str(eval_tasks), "--num-fewshot", "1", "--limit", "4"]  # fmt: skip
    changed = _run(argv)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "1 to do, 0 done already" in changed.stderr
    entry = read_result(base / "eval" / "iter_0000004.json")["tasks"]
    assert entry["salt_nextline"]["limit"] == 4 and entry["salt_lastword"]["limit"] == 8
    assert read_result(base / "eval" / "iter_0000002.json")["tasks"]["salt_nextline"]["limit"] == 8


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "salt_lastword,no_such_task"], "knows no task 'no_such_task'"),
        (["--tasks", "salt_lastword", "--iterations", "3"], "no checkpoint at iteration 3"),
        (["--tasks", "salt_lastword", "--iterations", "2,x"], "--iterations '2,x'"),
    ],
)
def test_bad_input_is_one_line(evaluated_runs, eval_tasks, tmp_path, extra, message):
    runs, _ = evaluated_runs
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(runs["salt"] / "iter_0000002", run / "iter_0000002", target_is_directory=True)
    result = _run(["tools/evaluate.py", "--load", str(run), "--include-path", str(eval_tasks),
                   *extra])  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("evaluate.py: error:")
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (run / "eval").exists()


def test_missing_lm_eval_says_how_to_install(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "lm_eval.py").write_text(
        "raise ImportError(\"No module named 'lm_eval'\", name='lm_eval')\n"
    )
    path = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))
    result = _run(["tools/evaluate.py", "--load", str(tmp_path), "--tasks", "x"],
                  PYTHONPATH=path)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "pip install -e .[eval]" in line and "lm_eval" in line


def test_compare_runs_reports_few_shot_results(evaluated_runs, tmp_path):
    runs, _ = evaluated_runs
    prefix = tmp_path / "report" / "cmp"
    result = _run(["tools/compare_runs.py", str(runs["baseline"]), str(runs["salt"]),
                   "--baseline", str(runs["baseline"]), "--out", str(prefix)])  # fmt: skip
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "report" / "cmp.md").read_text()
    assert (tmp_path / "report" / "cmp_fewshot.png").stat().st_size > 10_000
    assert "## Few-shot evaluation (lm-evaluation-harness)" in md

    # The numbers, from the results files themselves.
    def scores(run, it):
        tasks = read_result(run / "eval" / f"iter_{it:07d}.json")["tasks"]
        return [tasks[t]["metrics"][tasks[t]["primary_metric"]] for t in TASKS.split(",")]

    target = sum(scores(runs["baseline"], 4)) / 2
    assert f"final few-shot average **{target:.4f}** at step 4" in md
    for name in ("baseline", "salt"):
        label = "baseline (baseline)" if name == "baseline" else name
        for it in (2, 4):
            values = scores(runs[name], it)
            avg = sum(values) / 2
            cells = [label, str(it), f"{25 * it}%", *(f"{v:.4f}" for v in values), f"{avg:.4f}"]
            assert "| " + " | ".join(cells) in md, cells
    salt_avgs = {it: sum(scores(runs["salt"], it)) / 2 for it in (2, 4)}
    reached = [it for it in (2, 4) if salt_avgs[it] >= target]
    if reached:
        assert (
            f"salt reaches the baseline's final few-shot average {target:.4f} at step "
            f"{reached[0]} ({25 * reached[0]:.1f}% of the baseline's 4 steps)" in md
        )
    else:
        assert "salt never reaches the baseline's final few-shot average" in md


def test_compare_runs_refuses_a_bad_results_file(evaluated_runs, tmp_path):
    runs = {}
    for name, run in evaluated_runs[0].items():  # what compare_runs reads: the log and eval/
        runs[name] = tmp_path / name
        shutil.copytree(run / "eval", runs[name] / "eval")
        shutil.copyfile(run / "metrics.jsonl", runs[name] / "metrics.jsonl")
    bad = runs["salt"] / "eval" / "iter_0000002.json"
    bad.write_text('{"schema": 1, "iteration": 2, "tasks": {"salt_nextline": 3}}')
    result = _run(["tools/compare_runs.py", str(runs["baseline"]), str(runs["salt"]),
                   "--out", str(tmp_path / "report" / "cmp")])  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert str(bad) in line and "'salt_nextline' has no 'metrics'" in line
    assert not (tmp_path / "report").exists() or not any((tmp_path / "report").iterdir())


def test_tags_and_globs_resolve_to_the_tasks_results_are_kept_under(eval_tasks):
    from megatron_salt.evaluation.harness import resolve_tasks, task_manager

    manager = task_manager([eval_tasks], ["salt_demo"])
    both = ["salt_lastword", "salt_nextline"]
    assert resolve_tasks(["salt_demo"], manager) == both  # a tag has no result of its own
    assert resolve_tasks(["salt_*", "salt_nextline"], manager) == both
