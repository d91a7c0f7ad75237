"""A real-text demo corpus in Pile format, built offline from the Python standard library.

Every machine that can run this project has a Python installation, and a Python installation
carries several megabytes of real English prose and real code. We turn it into Pile-style
shards (``NN.jsonl.zst``, one ``{"text": ..., "meta": {"pile_set_name": ...}}`` per line) so
``make demo`` exercises exactly the path a user's Pile shards take, without a download.

Subsets (``meta.pile_set_name``):

* ``StdlibDocs``: the pydoc page of every importable stdlib module and submodule (prose from
  docstrings, signatures), one document per module.
* ``StdlibSource``: the ``.py`` source files of the stdlib (tests and generated codec tables
  excluded), one document per file: code, like the Pile's GitHub subset.
* ``PythonReference``: the language-reference topics shipped for ``help()`` in
  ``pydoc_data.topics``: one document per topic.
* ``PythonLicense``: the Python license text (a single document).

The output is deterministic for a given Python build: documents are generated in a fixed order,
shuffled with a fixed seed and dealt into shards by size; pydoc pages are rendered in child
processes with a fixed hash seed and scrubbed of addresses, paths and environment values.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import zstandard

SUBSETS = ("StdlibDocs", "StdlibSource", "PythonReference", "PythonLicense")

# Top-level stdlib names that must not be imported (side effects: a browser, a Tk window, the
# Zen printed) or are not worth a page (test suites, private helpers, deprecated tool chains).
_SKIP_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "pydoc_data",
        "test",
        "xxsubtype",
        "xxlimited",
        "xxlimited_35",
    }
)
# Source trees left out of StdlibSource: test suites, generated tables, vendored wheels.
_SKIP_SOURCE_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlesave",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "tkinter",
        "ensurepip",
        "encodings",
        "pydoc_data",
        "__pycache__",
    }
)
SHUFFLE_SEED = 1234
ZSTD_LEVEL = 3


@dataclass
class DemoDocument:
    subset: str
    source: str  # where the text came from: a module name or a path relative to the stdlib
    text: str

    def to_json_line(self) -> bytes:
        record = {"text": self.text, "meta": {"pile_set_name": self.subset, "source": self.source}}
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"


@dataclass
class CorpusReport:
    """What was written: per-subset documents and UTF-8 bytes of text, and the shard files."""

    output_dir: str
    shards: list[str] = field(default_factory=list)
    docs: dict[str, int] = field(default_factory=dict)
    text_bytes: dict[str, int] = field(default_factory=dict)
    compressed_bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "output_dir": self.output_dir,
            "shards": [os.path.basename(s) for s in self.shards],
            "subsets": {
                name: {"docs": self.docs[name], "text_bytes": self.text_bytes[name]}
                for name in sorted(self.docs)
            },
            "total": {"docs": sum(self.docs.values()), "text_bytes": sum(self.text_bytes.values())},
            "compressed_bytes": self.compressed_bytes,
            "python": sys.version.split()[0],
        }


def _stdlib_dir() -> str:
    return sysconfig.get_path("stdlib")


def stdlib_module_names() -> list[str]:
    """Public stdlib modules and submodules, sorted, found without importing anything."""
    names = {n for n in sys.stdlib_module_names if not n.startswith("_") and n not in _SKIP_MODULES}
    stdlib = _stdlib_dir()
    for top in sorted(os.listdir(stdlib)):
        package_dir = os.path.join(stdlib, top)
        if top not in names or not os.path.isfile(os.path.join(package_dir, "__init__.py")):
            continue
        if top == "encodings":  # ~120 codec modules with near-identical pages
            continue
        for root, dirs, files in os.walk(package_dir):
            dirs[:] = sorted(
                d
                for d in dirs
                if d not in _SKIP_SOURCE_DIRS
                and not d.startswith(("_", "."))
                and os.path.isfile(os.path.join(root, d, "__init__.py"))
            )
            package = os.path.relpath(root, stdlib).replace(os.sep, ".")
            names.add(package)
            for f in files:
                stem = f[:-3]
                if f.endswith(".py") and not stem.startswith("_") and "test" not in stem:
                    names.add(f"{package}.{stem}")
    return sorted(names)


def iter_pydoc_documents(
    modules: Sequence[str] | None = None, processes: int = 2
) -> Iterator[DemoDocument]:
    """Render pydoc pages in ``processes`` child interpreters; yields in module-name order."""
    modules = list(modules) if modules is not None else stdlib_module_names()
    processes = max(1, min(processes, len(modules)))
    # Only what the child needs to start; it replaces its environment again before importing.
    env = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    pages: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="salt-pydoc-") as workdir:
        children = []
        for rank in range(processes):
            out_path = os.path.join(workdir, f"pages-{rank}.jsonl")
            cmd = [sys.executable, "-m", "megatron_salt.data._pydoc_render", out_path]
            cmd += modules[rank::processes]
            # cwd=workdir: an empty directory, so no file of the caller shadows a stdlib module.
            child = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            children.append((child, out_path))
        for child, out_path in children:
            _, stderr = child.communicate()
            if child.returncode != 0:
                tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
                raise RuntimeError(f"pydoc renderer failed: {' '.join(tail)}")
            with open(out_path, encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    pages[record["module"]] = record["text"]
    for name in modules:
        if name in pages:
            yield DemoDocument("StdlibDocs", name, pages[name])


def iter_source_documents() -> Iterator[DemoDocument]:
    """Stdlib ``.py`` files in path order (tests, codec tables and vendored trees skipped)."""
    stdlib = _stdlib_dir()
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_SOURCE_DIRS and not d.startswith("."))
        if os.path.relpath(root, stdlib).startswith("config-"):
            continue
        for f in sorted(files):
            # _sysconfigdata*: generated at build time, paths of the build machine.
            if not f.endswith(".py") or f.startswith("_sysconfigdata"):
                continue
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                raw = fh.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a legacy-encoded file: not worth guessing its codec
            rel = os.path.relpath(path, stdlib).replace(os.sep, "/")
            yield DemoDocument("StdlibSource", rel, text)


def iter_reference_documents() -> Iterator[DemoDocument]:
    """The language-reference topics behind ``help('if')`` and friends."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield DemoDocument("PythonReference", name, topics[name])


def iter_license_documents() -> Iterator[DemoDocument]:
    for name in ("LICENSE.txt", "LICENSE"):
        path = os.path.join(_stdlib_dir(), name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield DemoDocument("PythonLicense", name, f.read())
            return


def iter_documents(
    subsets: Iterable[str] = SUBSETS,
    max_docs_per_subset: int | None = None,
    pydoc_modules: Sequence[str] | None = None,
    processes: int = 2,
) -> Iterator[DemoDocument]:
    """Documents of the chosen subsets, in generation order (before shuffling)."""
    sources = {
        "StdlibDocs": lambda: iter_pydoc_documents(pydoc_modules, processes),
        "StdlibSource": iter_source_documents,
        "PythonReference": iter_reference_documents,
        "PythonLicense": iter_license_documents,
    }
    for subset in subsets:
        if subset not in sources:
            raise ValueError(f"unknown demo subset {subset!r} (choose from {', '.join(SUBSETS)})")
        for i, doc in enumerate(sources[subset]()):
            if max_docs_per_subset is not None and i >= max_docs_per_subset:
                break
            if doc.text.strip():
                yield doc


def write_shards(
    documents: Sequence[DemoDocument], output_dir: str, num_shards: int
) -> CorpusReport:
    """Shuffle documents with a fixed seed and deal them into shards of about equal size.

    Each shard is written to a temporary name and renamed when complete.
    """
    os.makedirs(output_dir, exist_ok=True)
    order = list(range(len(documents)))
    random.Random(SHUFFLE_SEED).shuffle(order)
    lines = [documents[i].to_json_line() for i in order]
    total = sum(len(line) for line in lines)
    num_shards = max(1, min(num_shards, len(lines)))
    report = CorpusReport(output_dir=output_dir)
    for doc in documents:
        report.docs[doc.subset] = report.docs.get(doc.subset, 0) + 1
        report.text_bytes[doc.subset] = report.text_bytes.get(doc.subset, 0) + len(
            doc.text.encode("utf-8")
        )

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    start = 0
    written = 0
    for shard in range(num_shards):
        # Cut where the running size crosses the shard's share of the total.
        target = total * (shard + 1) / num_shards
        end = start
        while end < len(lines) and (written < target or end == start):
            written += len(lines[end])
            end += 1
        if shard == num_shards - 1:
            end = len(lines)
        path = os.path.join(output_dir, f"{shard:02d}.jsonl.zst")
        tmp_path = path + ".tmp"
        with open(tmp_path, "wb") as raw:
            with compressor.stream_writer(raw, closefd=False) as writer:
                for line in lines[start:end]:
                    writer.write(line)
        os.replace(tmp_path, path)
        report.shards.append(path)
        report.compressed_bytes += os.path.getsize(path)
        start = end
    return report


def _previous_shards(manifest: str) -> set[str]:
    """Shard names an earlier run recorded in ``corpus.json`` (empty if none)."""
    try:
        with open(manifest, encoding="utf-8") as f:
            return set(json.load(f).get("shards", []))
    except (OSError, ValueError, AttributeError):
        return set()


def build_demo_corpus(
    output_dir: str,
    num_shards: int = 4,
    subsets: Iterable[str] = SUBSETS,
    max_docs_per_subset: int | None = None,
    pydoc_modules: Sequence[str] | None = None,
    processes: int = 2,
) -> CorpusReport:
    """Generate the demo corpus into ``output_dir`` (``00.jsonl.zst`` ...) and describe it.

    A ``corpus.json`` next to the shards records the same per-subset counts the report holds.
    Shards an earlier run recorded there are replaced; any other ``.jsonl*`` file in the
    directory is refused rather than mixed in or deleted.
    """
    manifest = os.path.join(output_dir, "corpus.json")
    previous = _previous_shards(manifest)
    if os.path.isdir(output_dir):
        foreign = [
            name
            for name in sorted(os.listdir(output_dir))
            if name.endswith((".jsonl", ".jsonl.zst", ".jsonl.gz")) and name not in previous
        ]
        if foreign:
            # Never delete or mix with data we did not write (it could be real Pile shards).
            raise FileExistsError(
                f"--output-dir {output_dir!r} holds shards this tool did not write "
                f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                "choose an empty directory"
            )
    documents = list(iter_documents(subsets, max_docs_per_subset, pydoc_modules, processes))
    if not documents:
        raise ValueError("the demo corpus came out empty")
    report = write_shards(documents, output_dir, num_shards)
    keep = {os.path.basename(s) for s in report.shards}
    for name in previous - keep:  # shards of an earlier run with more shards
        stale = os.path.join(output_dir, name)
        if os.path.exists(stale):
            os.remove(stale)
    with open(manifest + ".tmp", "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=2)
        f.write("\n")
    os.replace(manifest + ".tmp", manifest)
    return report
