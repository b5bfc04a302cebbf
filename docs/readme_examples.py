"""The README's examples, run against a live server.

    .venv/bin/python docs/readme_examples.py            check: run them, say what differs (exit 1 if any)
    .venv/bin/python docs/readme_examples.py --write    `make docs`: rewrite the README's example outputs and
                                                        its pictures from the answers

Both start `python -m service` over `models_store/` on a free port (or use `--url`). tests/e2e/test_readme.py
runs the check.

What runs, and how the README says what to expect:
- every ```bash or ```sh block that calls the API (`$API`, or `:8000` on localhost), in order, in one bash
  session in a scratch folder, with API set to the live server; a block right after `<!-- not run -->` is
  skipped (docker, kubectl, make);
- every ```python block that calls the API (`:8000`), with the live server's address in its place;
- after a command, `# {...}` (inline, or on the next lines, continued with `#  `) is its example answer: the
  check compares the answer's keys with it, `--write` rewrites it from the answer, abbreviated;
- `# 400` (any status) at the start of an inline comment is the status the command must get; otherwise every
  curl call must answer 2xx;
- `# -> docs/NAME.png` after a command: the file it writes is the README's picture docs/NAME.png; the check
  compares their sha256, `--write` copies it there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LIVE = re.compile(r"\$API|(localhost|127\.0\.0\.1):8000")
PICTURE = re.compile(r"->\s*(docs/[\w.-]+\.png)")
STATUS = re.compile(r"^\s*(\d{3})\b")


@dataclass
class Command:
    line: int  # where it starts in the README (0-based)
    text: str  # the command, continuation lines joined
    end: int  # the README line after its last continuation line
    inline: str = ""  # its inline comment
    example: list[int] = field(default_factory=list)  # README lines holding its example answer

    @property
    def expected_status(self) -> int | None:
        m = STATUS.match(self.inline)
        return int(m.group(1)) if m else None

    @property
    def picture(self) -> str | None:
        m = PICTURE.search(self.inline)
        return m.group(1) if m else None


@dataclass
class Block:
    lang: str
    start: int  # the line of the opening fence
    lines: list[str]
    commands: list[Command] = field(default_factory=list)


def blocks(text: str) -> list[Block]:
    """The README's live code blocks (see the module docstring)."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = lines[i + 1:j]
        skipped = i > 0 and lines[i - 1].strip().startswith("<!-- not run")
        if m.group(1) in ("bash", "sh", "python") and not skipped and LIVE.search("\n".join(body)):
            b = Block(m.group(1), i, body)
            if b.lang != "python":
                b.commands = _commands(body, i + 1)
            out.append(b)
        i = j + 1
    return out


def _open_quote(text: str) -> str:
    """The quote character left open at the end of `text` ("" when none)."""
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
    return quote


def _split_comment(line: str, quote: str = "") -> tuple[str, str]:
    """(code, comment) of a shell line: the first # outside quotes that starts a word (`quote`: a quote
    still open from the line before)."""
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k].rstrip(), line[k + 1:].strip()
    return line.rstrip(), ""


def _commands(body: list[str], first: int) -> list[Command]:
    out: list[Command] = []
    k = 0
    while k < len(body):
        code, comment = _split_comment(body[k])
        if not code.strip():
            if out and comment.startswith("{") and out[-1].end == first + k:  # an example on the next lines
                cmd = out[-1]
                while k < len(body) and body[k].lstrip().startswith("#"):
                    cmd.example.append(first + k)
                    k += 1
                cmd.end = first + k
                continue
            k += 1
            continue
        start, text = k, code
        while (text.endswith("\\") or _open_quote(text)) and k + 1 < len(body):
            k += 1
            code, comment2 = _split_comment(body[k], _open_quote(text))
            # a backslash continues the line; a quote still open keeps its newline
            text = text[:-1].rstrip() + " " + code.strip() if text.endswith("\\") else text + "\n" + code
            comment = comment2 or comment
        k += 1
        if re.match(r"^API=", text):
            continue  # the harness sets it
        out.append(Command(first + start, text, first + k, comment))
    return out


# --- running ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    command: Command
    stdout: str
    statuses: list[int]
    rc: int


def run_shell(bs: list[Block], url: str, work: Path) -> list[Result]:
    """Every command of the shell blocks, in one bash session; each command's output, statuses and code."""
    cmds = [c for b in bs if b.lang != "python" for c in b.commands]
    host = url.removeprefix("http://")
    script = [
        "set -u",
        f"API={url}",
        "curl() { command curl -w '%{stderr}@@STATUS %{http_code}\\n' \"$@\"; }",
    ]
    for i, c in enumerate(cmds):
        text = re.sub(r"(localhost|127\.0\.0\.1):8000", host, c.text)
        script += [f"echo '@@BEGIN {i}'; echo '@@BEGIN {i}' >&2", text, f"echo; echo \"@@END {i} $?\""]
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, capture_output=True, text=True,
                          timeout=300)
    outs = re.split(r"^@@BEGIN (\d+)$", done.stdout, flags=re.M)
    errs = re.split(r"^@@BEGIN (\d+)$", done.stderr, flags=re.M)
    by_out = {int(outs[i]): outs[i + 1] for i in range(1, len(outs), 2)}
    by_err = {int(errs[i]): errs[i + 1] for i in range(1, len(errs), 2)}
    results = []
    for i, c in enumerate(cmds):
        body = by_out.get(i, "")
        m = re.search(r"^@@END \d+ (\d+)$", body, flags=re.M)
        rc = int(m.group(1)) if m else -1
        text = body[: m.start()].strip("\n") if m else body
        statuses = [int(s) for s in re.findall(r"^@@STATUS (\d+)$", by_err.get(i, ""), flags=re.M)]
        results.append(Result(c, text, statuses, rc))
    return results


def run_python(b: Block, url: str, work: Path) -> subprocess.CompletedProcess[str]:
    host = url.removeprefix("http://")
    code = re.sub(r"(localhost|127\.0\.0\.1):8000", host, "\n".join(b.lines))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=env,
                          timeout=300)


# --- checking -----------------------------------------------------------------------------------------------
def _keys(doc: Any) -> set[str]:
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _keys(v)}
    if isinstance(doc, list):
        return {k for v in doc[:3] for k in _keys(v)}
    return set()


def _answer(stdout: str) -> Any:
    try:
        return json.loads(stdout)
    except ValueError:
        return None


def problems(results: list[Result], lines: list[str], work: Path) -> list[str]:
    """What does not hold: a command that failed, an unexpected status, an example whose keys the answer
    lacks, a picture that differs from docs/."""
    out = []
    for r in results:
        c = r.command
        where = f"README.md:{c.line + 1}: {c.text[:70]}"
        if r.rc != 0:
            out.append(f"{where}: exit code {r.rc}: {r.stdout[-200:]}")
            continue
        want = c.expected_status
        bad = [s for s in r.statuses if (s != want if want else not 200 <= s < 300)]
        if bad:
            out.append(f"{where}: HTTP {bad} (expected {want or '2xx'}): {r.stdout[:200]}")
        example = c.inline if c.inline.startswith("{") else " ".join(
            lines[k].lstrip()[1:] for k in c.example)
        if example:
            claimed = set(re.findall(r'"(\w+)":', example))
            answer = _answer(r.stdout)
            missing = claimed - _keys(answer) if answer is not None else claimed
            if missing:
                out.append(f"{where}: the example shows {sorted(missing)}, the answer has not: "
                           f"{r.stdout[:200]}")
        if c.picture:
            made = _written(c, work)
            if made is None:
                out.append(f"{where}: wrote no file for {c.picture}")
            elif _sha(made) != _sha(ROOT / c.picture):
                out.append(f"{where}: {c.picture} differs from what the command makes (run make docs)")
    return out


def _written(c: Command, work: Path) -> Path | None:
    m = re.search(r"-o\s+(\S+)", c.text)
    return work / m.group(1) if m and (work / m.group(1)).is_file() else None


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""


# --- writing ------------------------------------------------------------------------------------------------
def abbreviate(doc: Any, depth: int = 0) -> str:
    """A JSON answer, short enough to read in a README: arrays cut to their first items, numbers to 4
    significant digits, long strings to their start."""
    if isinstance(doc, dict):
        return "{" + ",".join(f'"{k}":{abbreviate(v, depth + 1)}' for k, v in doc.items()) + "}"
    if isinstance(doc, list):
        if not doc:
            return "[]"
        keep = 1 if isinstance(doc[0], list | dict) else (3 if len(doc) > 4 else len(doc))
        items = ",".join(abbreviate(v, depth + 1) for v in doc[:keep])
        return "[" + items + (",..." if keep < len(doc) else "") + "]"
    if isinstance(doc, float):
        return f"{doc:.4g}"
    if isinstance(doc, str) and len(doc) > 24:
        return json.dumps(doc[:12] + "...")
    return json.dumps(doc)


def _wrap(text: str, indent: str, width: int = 108) -> list[str]:
    lines, cur = [], f"{indent}# "
    for part in re.split(r"(?<=,)", text):
        if len(cur) + len(part) > width and cur.strip() != "#":
            lines.append(cur.rstrip())
            cur = f"{indent}#  "
        cur += part
    lines.append(cur.rstrip())
    return lines


def rewrite(text: str, results: list[Result], work: Path) -> str:
    """The README with each example answer rewritten from its command's answer, and the pictures copied."""
    lines = text.split("\n")
    edits: list[tuple[int, int, list[str]]] = []
    for r in results:
        c, answer = r.command, _answer(r.stdout)
        if c.picture and (made := _written(c, work)) is not None:
            shutil.copyfile(made, ROOT / c.picture)
        if answer is None:
            continue
        if c.example:
            indent = re.match(r"\s*", lines[c.example[0]]).group(0)  # type: ignore[union-attr]
            edits.append((c.example[0], c.example[-1] + 1, _wrap(abbreviate(answer), indent)))
        elif c.inline.startswith("{"):
            short = abbreviate(answer)
            if len(short) <= 60:  # an inline example stays inline, with whatever the comment says after it
                k = c.end - 1
                code, comment = _split_comment(lines[k])
                rest = comment[comment.index("}") + 1:] if "}" in comment else ""
                gap = re.match(r"\s*", lines[k][len(code):]).group(0)  # type: ignore[union-attr]
                edits.append((k, k + 1, [f"{code}{gap}# {short}{rest}"]))
    for a, b, new in sorted(edits, reverse=True):
        lines[a:b] = new
    return "\n".join(lines)


# --- the server ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(store: Path = ROOT / "models_store") -> Iterator[str]:
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LATENTSERVE_")},
           "LATENTSERVE_STORE": str(store), "LATENTSERVE_PORT": str(port), "LATENTSERVE_LOG_LEVEL": "warning",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def check(url: str, write: bool = False) -> list[str]:
    """Run the README's examples against `url`; with `write`, rewrite README.md and docs/ from them."""
    text = README.read_text()
    bs = blocks(text)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = run_shell(bs, url, work)
        if write:
            README.write_text(rewrite(text, results, work))
            text = README.read_text()
        found = problems(results, text.split("\n"), work) if not write else []
        for b in bs:
            if b.lang == "python":
                done = run_python(b, url, work)
                if done.returncode != 0:
                    found.append(f"README.md:{b.start + 1}: python block failed: {done.stderr[-500:]}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="rewrite README.md's example answers and docs/*.png")
    p.add_argument("--url", help="a running server (default: start one over models_store/)")
    args = p.parse_args(argv)
    if args.url:
        found = check(args.url, args.write)
    else:
        with live_server() as url:
            found = check(url, args.write)
    for f in found:
        print(f)
    if args.write:
        print("rewrote README.md's example answers and pictures"
              + (f"; {len(found)} problems" if found else ""))
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
