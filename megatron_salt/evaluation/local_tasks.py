"""Offline lm-eval tasks from held-out documents of the demo corpus.

lm-eval's standard tasks download their data sets; these two need nothing but this
repository and a Python installation, so ``make demo`` (and a cluster without a hub) can
measure few-shot quality:

* ``salt_lastword`` (LAMBADA-style): a prose passage from a held-out pydoc page, the model
  must predict its final word (``acc``: the greedy continuation is exactly that word;
  ``perplexity`` of the word).
* ``salt_nextline`` (HellaSwag-style): six lines of a held-out stdlib source file, the model
  picks the true next line among four; the three distractors are lines of other held-out
  files, re-indented like the true line so indentation alone does not give it away
  (``acc``, ``acc_norm``).

**Held out** means never in the training corpus, checked twice: documents are taken past
the ones the corpus holds of each subset, in the corpus generator's own order
(:func:`megatron_salt.data.demo_corpus.iter_documents`; ``make demo`` keeps the first
``DEMO_MAX_DOCS`` of each), and any document whose text is in the corpus, and any example
whose text occurs verbatim in it (pydoc pages repeat inherited docstrings), is dropped.
``PythonReference`` and ``PythonLicense`` have no documents left over, so they give none.

Everything is deterministic for a given Python build and corpus: documents in generation
order, one seeded ``random.Random`` for the choices. Each task gets a ``test`` split and a
``fewshot`` split drawn from *other* documents, so a few-shot prompt never shows a test
document. The YAML templates in ``tasks/`` are written next to the data with the data's
absolute path filled in, since lm-eval resolves ``data_files`` against the working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_salt.data.demo_corpus import DemoDocument, iter_documents, stdlib_module_names
from megatron_salt.data.pile import expand_inputs
from megatron_salt.data.pile import iter_documents as iter_corpus_documents

TEMPLATE_DIR = Path(__file__).with_name("tasks")
TASKS = ("salt_lastword", "salt_nextline")
DATA_DIR_PLACEHOLDER = "@DATA_DIR@"
MANIFEST = "tasks.json"

_SENTENCE_END = re.compile(r"^([A-Za-z]{3,})[.!?]$")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[,;:.!?]?$")


@dataclass(frozen=True)
class LocalTaskConfig:
    """How much data to draw and how each example looks."""

    docs_per_subset: int = 120  # held-out documents read per subset (pydoc pages, source files)
    fewshot_docs: int = 6  # of those, the first ones feed the few-shot split only
    max_examples: int = 500  # per task and split ``test``
    examples_per_doc: int = 4
    context_words: int = 40  # salt_lastword: words before the target (at most)
    min_context_words: int = 12
    context_lines: int = 6  # salt_nextline: lines before the true one
    num_choices: int = 4
    min_line_chars: int = 16
    max_line_chars: int = 100
    seed: int = 1234


@dataclass
class CorpusIndex:
    """The training corpus, as needed to prove an example is held out."""

    doc_hashes: set[str]
    docs_per_subset: dict[str, int]
    prose: str  # all text, whitespace collapsed and pydoc's "|" margins removed
    raw: str  # all text as is (for code)

    @classmethod
    def read(cls, corpus_dir: str | Path) -> CorpusIndex:
        paths = expand_inputs([str(corpus_dir)], flag="--corpus")
        hashes, counts, prose, raw = set(), {}, [], []
        for subset, text in iter_corpus_documents(paths):
            hashes.add(_digest(text))
            counts[subset] = counts.get(subset, 0) + 1
            prose.append(" ".join(_prose_words(text)))
            raw.append(text)
        return cls(hashes, counts, "\n".join(prose), "\n".join(raw))

    def holds(self, doc: DemoDocument) -> bool:
        return _digest(doc.text) in self.doc_hashes


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _prose_words(text: str) -> list[str]:
    return [w for line in text.splitlines() for w in line.strip().lstrip("|").split()]


# --- held-out documents ------------------------------------------------------------------


def held_out_documents(
    corpus: CorpusIndex, subset: str, count: int, processes: int = 2
) -> list[DemoDocument]:
    """Up to ``count`` documents of ``subset`` generated after those the corpus holds."""
    start = corpus.docs_per_subset.get(subset, 0)
    if subset == "StdlibDocs":  # render only the pages we need
        modules = stdlib_module_names()[start : start + 2 * count]
        docs = iter_documents([subset], pydoc_modules=modules, processes=processes)
    else:
        docs = (d for i, d in enumerate(iter_documents([subset])) if i >= start)
    out = []
    for doc in docs:
        if not corpus.holds(doc):
            out.append(doc)
            if len(out) == count:
                break
    return out


# --- salt_lastword -----------------------------------------------------------------------


def _paragraphs(text: str) -> list[list[str]]:
    """Runs of prose lines of a pydoc page (signatures, headings and code lines end a run)."""
    paragraphs, current = [], []
    for line in text.splitlines():
        words = line.strip().lstrip("|").split()
        prose = len(words) >= 3 and sum(bool(_WORD.match(w)) for w in words) >= 0.8 * len(words)
        if prose:
            current.extend(words)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def lastword_examples(doc: DemoDocument, cfg: LocalTaskConfig) -> list[dict]:
    """One candidate per paragraph that ends a sentence with a word of 3+ letters."""
    out = []
    for words in _paragraphs(doc.text):
        match = _SENTENCE_END.match(words[-1])
        context = words[-1 - cfg.context_words : -1]
        if not match or len(context) < cfg.min_context_words:
            continue
        # Start at a sentence boundary inside the window when there is one.
        for i, word in enumerate(context[:-1]):
            if word.endswith((".", "!", "?")) and len(context) - i - 1 >= cfg.min_context_words:
                context = context[i + 1 :]
                break
        out.append({"context": " ".join(context), "target": match.group(1), "source": doc.source})
    return out


# --- salt_nextline -----------------------------------------------------------------------


def _code_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _usable(line: str, cfg: LocalTaskConfig) -> bool:
    body = line.strip()
    return cfg.min_line_chars <= len(body) <= cfg.max_line_chars and not body.startswith("#")


def nextline_windows(doc: DemoDocument, cfg: LocalTaskConfig) -> list[dict]:
    """Every (context lines, true next line) window of a source file."""
    lines = _code_lines(doc.text)
    return [
        {"lines": lines[i - cfg.context_lines : i], "answer": lines[i], "source": doc.source}
        for i in range(cfg.context_lines, len(lines))
        if _usable(lines[i], cfg) and lines[i].strip() not in {x.strip() for x in lines[:i]}
    ]


def nextline_examples(
    windows: Sequence[dict],
    distractor_pool: Sequence[tuple[str, str]],
    cfg: LocalTaskConfig,
    rng: random.Random,
) -> list[dict]:
    """Multiple-choice items: the true line at a random position among distractors drawn
    from ``distractor_pool`` ((source, line) of other documents), re-indented like it."""
    out = []
    for window in windows:
        answer = window["answer"]
        indent = answer[: len(answer) - len(answer.lstrip())]
        others = [line for source, line in distractor_pool if source != window["source"]]
        if len({line.strip() for line in others} - {answer.strip()}) < cfg.num_choices - 1:
            raise ValueError(f"too few lines outside {window['source']} for distractors")
        choices, seen = [], {answer.strip()}
        while len(choices) < cfg.num_choices - 1:
            line = rng.choice(others).strip()
            if line not in seen:
                seen.add(line)
                choices.append(indent + line)
        gold = rng.randrange(cfg.num_choices)
        choices.insert(gold, answer)
        out.append(
            {
                "context": "\n".join(window["lines"]),
                "choices": choices,
                "gold": gold,
                "source": window["source"],
            }
        )
    return out


# --- the whole set -----------------------------------------------------------------------


def _pick(candidates: list[dict], per_doc: int, rng: random.Random, keep) -> list[dict]:
    """Up to ``per_doc`` candidates of each document for which ``keep`` holds, tried in an
    order drawn by ``rng``; returned in document order. (``keep`` is the costly verbatim
    search in the corpus, so it only runs on candidates that could be chosen.)"""
    by_doc: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        by_doc.setdefault(c["source"], []).append(i)
    chosen = []
    for indices in by_doc.values():
        taken = 0
        for i in rng.sample(indices, len(indices)):
            if taken == per_doc:
                break
            if keep(candidates[i]):
                chosen.append(i)
                taken += 1
    return [candidates[i] for i in sorted(chosen)]


def build_local_tasks(
    corpus_dir: str | Path,
    out_dir: str | Path,
    cfg: LocalTaskConfig = LocalTaskConfig(),
    processes: int = 2,
) -> dict:
    """Write ``{task}.{test,fewshot}.jsonl`` and ``{task}.yaml`` for each task into
    ``out_dir`` (via a temporary directory, renamed into place); return the manifest."""
    corpus = CorpusIndex.read(corpus_dir)
    rng = random.Random(cfg.seed)
    splits: dict[str, dict[str, list[dict]]] = {}

    pages = held_out_documents(corpus, "StdlibDocs", cfg.docs_per_subset, processes)
    seen: set[tuple[str, str]] = set()
    lastword: dict[str, list[dict]] = {"fewshot": [], "test": []}
    for n, doc in enumerate(pages):
        split = "fewshot" if n < cfg.fewshot_docs else "test"
        for ex in lastword_examples(doc, cfg):
            key = (ex["context"], ex["target"])
            if key not in seen:  # the same docstring on several pages
                seen.add(key)
                lastword[split].append(ex)

    def unseen_prose(ex: dict) -> bool:
        return f"{ex['context']} {ex['target']}" not in corpus.prose

    splits["salt_lastword"] = {
        split: _pick(items, cfg.examples_per_doc, rng, unseen_prose)
        for split, items in lastword.items()
    }

    files = held_out_documents(corpus, "StdlibSource", cfg.docs_per_subset, processes)
    pool = [
        (doc.source, line) for doc in files for line in _code_lines(doc.text) if _usable(line, cfg)
    ]
    windows: dict[str, list[dict]] = {"fewshot": [], "test": []}
    for n, doc in enumerate(files):
        split = "fewshot" if n < cfg.fewshot_docs else "test"
        windows[split].extend(nextline_windows(doc, cfg))

    def unseen_code(window: dict) -> bool:
        return "\n".join([*window["lines"], window["answer"]]) not in corpus.raw

    splits["salt_nextline"] = {
        split: nextline_examples(
            _pick(items, cfg.examples_per_doc, rng, unseen_code), pool, cfg, rng
        )
        for split, items in windows.items()
    }
    for task, by_split in splits.items():
        by_split["test"] = by_split["test"][: cfg.max_examples]
        for split, items in by_split.items():
            if not items:
                raise ValueError(
                    f"{task}: no {split} examples from held-out documents of {corpus_dir} "
                    "(is the corpus the whole demo corpus?)"
                )

    manifest = {
        "tasks": {
            task: {split: len(items) for split, items in by_split.items()}
            for task, by_split in splits.items()
        },
        "held_out": {
            "StdlibDocs": [d.source for d in pages],
            "StdlibSource": [d.source for d in files],
        },
        "corpus": {"dir": str(Path(corpus_dir).resolve()), "docs": corpus.docs_per_subset},
        "config": asdict(cfg),
    }
    _write_dir(Path(out_dir), splits, manifest)
    return manifest


def _write_dir(out_dir: Path, splits: dict, manifest: dict) -> None:
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and was not written by make_eval_tasks")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for task, by_split in splits.items():
            for split, items in by_split.items():
                _write_jsonl(tmp / f"{task}.{split}.jsonl", items)
            template = (TEMPLATE_DIR / f"{task}.yaml").read_text(encoding="utf-8")
            yaml = template.replace(DATA_DIR_PLACEHOLDER, str(out_dir))
            (tmp / f"{task}.yaml").write_text(yaml, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out_dir.exists():  # replace an earlier output of this tool
            old = out_dir.with_name(f".{out_dir.name}.old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            _rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        _rmtree(tmp)
        raise


def _write_jsonl(path: Path, items: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
