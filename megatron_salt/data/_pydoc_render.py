"""Child process of the demo-corpus generator: render stdlib modules with pydoc.

Run as ``python -m megatron_salt.data._pydoc_render OUT.jsonl MODULE...``. It lives in its own
process because it imports a couple of hundred stdlib modules (with their import-time side
effects) and because its output must not depend on the caller: the parent fixes
``PYTHONHASHSEED`` and the working directory, and this module removes what would still differ
between machines with the same Python build (object addresses, install paths, environment
values shown as module data).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pydoc
import re
import sys
import sysconfig
import warnings

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_FILE_SECTION = re.compile(r"\nFILE\n    [^\n]*\n")


class _StableTextDoc(type(pydoc.plaintext)):
    """pydoc's plain-text renderer, minus the parts that describe this machine."""

    def docother(self, object, name=None, mod=None, parent=None, maxlen=None, doc=None):
        # Module and class data can hold os.environ, sys.path, temp dirs...: show the values
        # of plain numbers only, the names of everything else.
        line = name or ""
        if type(object) in (bool, int, float) and name:
            line = f"{name} = {object!r}"
        if doc:
            line += "\n" + self.indent(str(doc)) + "\n"
        return line

    def getdocloc(self, object, basedir=None):
        # The online-docs link depends on the PYTHONDOCS environment variable.
        return None


def _machine_paths() -> list[str]:
    paths = {
        sysconfig.get_path("stdlib"),
        sysconfig.get_path("platstdlib"),
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.expanduser("~"),
        os.getcwd(),
    }
    # Longest first, so a prefix never hides a longer path that contains it.
    return sorted((p for p in paths if p and p != os.sep), key=len, reverse=True)


def render_module(name: str, renderer: pydoc.TextDoc, paths: list[str]) -> str | None:
    """Plain-text pydoc page of one module, or None when it does not import here."""
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            module = __import__(name, fromlist=["_"])
            text = pydoc.render_doc(module, renderer=renderer)
    except BaseException:  # noqa: BLE001 - platform-specific modules fail in many ways
        return None
    text = _FILE_SECTION.sub("\n", text)
    text = _ADDRESS.sub("", text)
    for path in paths:
        text = text.replace(path, "<path>")
    return text


# The environment modules see while imported: some capture os.environ at import time and pydoc
# shows it (cgi's ``environ=os.environ`` defaults), which would leak this machine's variables.
_FIXED_ENVIRON = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"}


def main(argv: list[str]) -> int:
    out_path, names = argv[0], argv[1:]
    os.environ.clear()
    os.environ.update(_FIXED_ENVIRON)
    renderer = _StableTextDoc()
    paths = _machine_paths()
    with open(out_path, "w", encoding="utf-8") as out:
        for name in names:
            text = render_module(name, renderer, paths)
            if text is not None:
                out.write(json.dumps({"module": name, "text": text}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
