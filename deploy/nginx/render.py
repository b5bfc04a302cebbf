"""Render deploy/nginx/nginx.conf.template without Docker: the same `${NAME}` substitution the nginx image's
envsubst does, plus one convenience it lacks: a list value repeats its whole line once per item, so one
`server ${API_ADDR} ...;` line becomes one upstream server per replica.

    python deploy/nginx/render.py LB_PORT=8080 API_ADDR=127.0.0.1:9001,127.0.0.1:9002 \\
        NGINX_STATE_DIR=/tmp/lb NGINX_LOG_DIR=/tmp/lb > /tmp/lb/nginx.conf
    nginx -p /tmp/lb -c /tmp/lb/nginx.conf -e /tmp/lb/error.log -g 'daemon off;'

Only the names given are replaced (nginx's own `$variables` stay); a placeholder left unset is an error,
because nginx would otherwise fail later with a less helpful message.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(text: str) -> set[str]:
    """Every `${NAME}` in the template, outside comment lines."""
    return {m for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in _PLACEHOLDER.findall(line)}


def render(values: Mapping[str, str | Sequence[str]], template: str | None = None) -> str:
    """The template with every placeholder filled; a list value repeats its line per item."""
    text = TEMPLATE.read_text() if template is None else template
    missing = placeholders(text) - set(values)
    if missing:
        raise KeyError(f"no value for {', '.join(sorted(missing))}")
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            out.append(line)
            continue
        lists = [n for n in _PLACEHOLDER.findall(line) if not isinstance(values.get(n, ""), str)]
        if len(lists) > 1:
            raise ValueError(f"a line may hold one list placeholder, got {lists}: {line.strip()}")
        items: list[str | None] = list(values[lists[0]]) if lists else [None]
        for item in items:
            out.append(_PLACEHOLDER.sub(_filler(values, item), line))
    return "".join(out)


def _filler(values: Mapping[str, str | Sequence[str]], item: str | None) -> Callable[[re.Match[str]], str]:
    """Replacement for one rendered line: a string value, the current list `item`, or the placeholder kept."""
    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            return m.group(0)
        v = values[name]
        return v if isinstance(v, str) else str(item)

    return fill


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("assignments", nargs="*", metavar="NAME=VALUE", help="a comma in VALUE makes a list")
    p.add_argument("--template", type=Path, default=TEMPLATE)
    args = p.parse_args(argv)
    values: dict[str, str | list[str]] = {}
    for a in args.assignments:
        name, sep, value = a.partition("=")
        if not sep:
            p.error(f"expected NAME=VALUE, got {a!r}")
        values[name] = value.split(",") if "," in value else value
    sys.stdout.write(render(values, args.template.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
