"""index.html: one self-contained page over the figures (no script, no network).

Sections in a fixed order, each figure as its PNG linking to its SVG, with its
caption and tables; figures that could not be drawn are listed with the
reason, so a reader knows what the run folder lacked.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from sim.report.figures import Built, Drawn, Skipped, Table
from sim.trace import atomic_write_text

SECTIONS = (
    ("timeline", "Timelines", "What each recorded replay did over simulated time."),
    ("latency", "Guest write latency", "What running block jobs cost the guest's writes."),
    ("coverage", "Coverage", "What the commands, job states and transitions exercised."),
    ("campaign", "Campaign", "How the fuzz campaign progressed and what it found."),
    ("matrix", "Policy matrix", "Which bitmap-placement policy breaks which invariant."),
)

CSS = """
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #111; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
figure { margin: 0.5em 0 1.8em 0; } figure img { max-width: 100%; height: auto;
       border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #333; max-width: 60em; }
p.lead { max-width: 60em; margin: 0.2em 0 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; }
.skipped { color: #555; font-size: 0.9em; } nav a { margin-right: 1em; }
table.sbs td { white-space: pre-wrap; font-family: "DejaVu Sans Mono", monospace;
       font-size: 0.9em; max-width: 30em; overflow-wrap: anywhere; }
tr.differs td { background: #fdecea; } tr.first td { background: #f8c9c4; font-weight: bold; }
"""


def write_index(
    out_dir: Path,
    title: str,
    summary: list[tuple[str, str]],
    built: list[Built],
    extra: dict[str, list[tuple[str, Table]]],
    notes: list[str],
) -> Path:
    """Write out_dir/index.html; `extra` adds titled tables at the end of a section."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _table(Table(["", ""], [[k, v] for k, v in summary]), header=False),
        "<nav>"
        + "".join(f'<a href="#{key}">{escape(name)}</a>' for key, name, _ in SECTIONS)
        + "</nav>",
    ]
    for key, name, blurb in SECTIONS:
        parts.append(f'<h2 id="{key}">{escape(name)}</h2><p>{escape(blurb)}</p>')
        parts += [_figure(b) for b in built if isinstance(b, Drawn) and b.section == key]
        for heading, table in extra.get(key, []):
            parts.append(f"<h3>{escape(heading)}</h3>{_table(table)}")
        skipped = [b for b in built if isinstance(b, Skipped) and b.section == key]
        if skipped:
            parts.append(
                '<ul class="skipped">'
                + "".join(
                    f"<li>Not drawn: <b>{escape(s.title)}</b>: {escape(s.reason)}.</li>"
                    for s in skipped
                )
                + "</ul>"
            )
    if notes:
        parts.append('<h2 id="notes">Notes on the run folder</h2><ul class="skipped">')
        parts += [f"<li>{escape(n)}</li>" for n in notes]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def _figure(d: Drawn) -> str:
    png, svg = f"figures/{d.stem}.png", f"figures/{d.stem}.svg"
    tables = "".join(
        f"<details><summary>{escape(t.fold)}</summary>{_table(t)}</details>"
        if t.fold
        else _table(t)
        for t in d.tables
    )
    return (
        f'<figure id="{escape(d.stem)}"><h3>{escape(d.title)}</h3>'
        + (f'<p class="lead">{escape(d.lead)}</p>' if d.lead else "")
        + f'<a href="{svg}"><img src="{png}" alt="{escape(d.title)}"></a>'
        f"<figcaption>{escape(d.caption)} "
        f'(<a href="{png}">PNG</a>, <a href="{svg}">SVG</a>)</figcaption>{tables}</figure>'
    )


def _table(t: Table, header: bool = True) -> str:
    header = header and any(t.header)  # ["", ""]: a list of "name: value" rows
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in t.header) + "</tr>" if header else ""
    # a headerless table is a list of "name: value" rows: values stay left-aligned
    body = "".join(
        "<tr>" + "".join(_cell(c, numbers=header) for c in row) + "</tr>" for row in t.rows
    )
    return f"<table>{head}{body}</table>"


def _cell(cell: Any, numbers: bool = True) -> str:
    if isinstance(cell, tuple):
        text, href = cell
        return f'<td><a href="{escape(str(href))}">{escape(str(text))}</a></td>'
    text = str(cell)
    numeric = numbers and text.replace(".", "", 1).replace("-", "", 1).isdigit()
    return f'<td class="num">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>"


def write_failure_page(
    out_dir: Path,
    stem: str,
    failure: Any,
    lines: list[dict[str, Any]],
    trace_href: str | None,
    both: dict[str, Any] | None = None,
) -> str:
    """failures/STEM.html: one failure on its own page (its shrunk trace step by step,
    the violation, its triage class and why, and, when `blocksim triage` ran it on real
    QEMU 7.2 (`both`, failures/STEM.qemu.json), QEMU's answers next to the simulator's
    with the first difference highlighted); returns the page's path relative to out_dir."""
    import json

    header = lines[0] if lines else {}
    steps = [x for x in lines[1:] if "final-expect" not in x]
    final: dict[str, Any] = (
        next((x["final-expect"] for x in lines if "final-expect" in x), {}) or {}
    )
    violations = final.get("violations") or []
    title = f"Failure: {failure.invariant} ({failure.triage})"
    about = [
        ["invariant", failure.invariant],
        ["class", failure.triage],
        ["why this class", failure.triage_reason or "nothing known explains it"],
        ["message", failure.message],
        ["steps (shrunk trace)", str(len(steps))],
        ["policy", str(header.get("policy", "?"))],
        ["seed", str(header.get("seed", "?"))],
        ["replay it", f"blocksim replay {failure.path}"],
    ]
    if both is not None:
        first = both.get("first_difference")
        said = (
            f"differs first at step {first} (highlighted below)"
            if first is not None
            else "answers every step as the simulator does (below)"
        )
        about.insert(3, ["real QEMU 7.2 (blocksim triage)", said])
    elif failure.triage == "expected":  # classed by a documented rule, never run on QEMU
        about.insert(3, ["real QEMU 7.2", "not run: an expected failure (why this class "
                         "names the recorded QEMU 7.2 behaviour); `blocksim triage RUN_DIR "
                         "--all` runs it on QEMU"])  # fmt: skip
    elif "QEMU" in failure.triage_reason:
        about.insert(3, ["real QEMU 7.2", failure.triage_reason])
    else:
        about.insert(3, ["real QEMU 7.2", "not checked: run `blocksim triage RUN_DIR` with QEMU"])
    rows = []
    for number, step in enumerate(steps, start=1):
        body = {k: v for k, v in step.items() if k != "expect"}
        what = json.dumps(body, separators=(", ", ": "))
        expect = step.get("expect")
        answer = "" if expect is None else json.dumps(expect, sort_keys=True)[:300]
        mark = " ◀ violation" if any(v.get("step") == number for v in violations) else ""
        rows.append([str(number), what + mark, answer])
    broken = [[str(v.get("step", "")), str(v.get("invariant", "")), str(v.get("message", ""))]
              for v in violations]  # fmt: skip
    link = f'<p><a href="../{escape(trace_href)}">the trace file</a></p>' if trace_href else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f'<p><a href="../index.html#campaign">back to the report</a></p><h1>{escape(title)}</h1>',
        _table(Table(["", ""], about), header=False),
        "<h2>Violation</h2>",
        _table(Table(["step", "invariant", "message"], broken)),
        *_side_by_side(both),
        "<h2>Shrunk trace</h2>",
        _table(Table(["#", "step", "answer pinned (expect)"], rows)),
        link,
        "</body></html>\n",
    ]
    path = out_dir / "failures" / f"{stem}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return f"failures/{stem}.html"


def _side_by_side(both: dict[str, Any] | None) -> list[str]:
    """Real QEMU 7.2 next to blocksim, step by step: the request, each side's response and
    the events that arrived during the step; differing steps shaded, the first one
    marked, the violating step named."""
    if both is None:
        return []
    import json

    def shown(side: Any) -> str:
        if not isinstance(side, dict):
            return ""
        parts = []
        if side.get("error"):
            parts.append(f"(not run: {side['error']})")
        if side.get("response") is not None:
            parts.append(json.dumps(side["response"], sort_keys=True))
        events = side.get("events")
        for event in events if isinstance(events, list) else []:
            if isinstance(event, dict):
                data = json.dumps(event.get("data"), sort_keys=True)
                parts.append(f"event {event.get('event')} {data}")
        return "\n".join(parts)

    first = both.get("first_difference")
    rows = []
    listed_steps = both.get("steps")
    for row in listed_steps if isinstance(listed_steps, list) else []:
        if not isinstance(row, dict):
            continue
        number = row.get("step")
        marks = []
        if number == first:
            marks.append("first difference")
        elif row.get("differs"):
            marks.append("differs")
        if row.get("violation"):
            marks.append("violation")
        css = "first" if number == first else "differs" if row.get("differs") else ""
        cells = [
            str(number),
            json.dumps(row.get("request"), separators=(", ", ": ")),
            shown(row.get("qemu")),
            shown(row.get("sim")),
            ", ".join(marks),
        ]
        tds = "".join(f"<td>{escape(c)}</td>" for c in cells)
        rows.append(f'<tr class="{css}">{tds}</tr>' if css else f"<tr>{tds}</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#", "request", "real QEMU 7.2", "blocksim", ""))
    listed_diffs = both.get("differences")
    diffs = (
        [d for d in listed_diffs if isinstance(d, dict)] if isinstance(listed_diffs, list) else []
    )
    listed = "".join(
        f"<li>{escape(str(d.get('where', '')))}: {escape(str(d.get('detail', '')))}</li>"
        for d in diffs[:20]
    )
    more = f"<li>... and {len(diffs) - 20} more</li>" if len(diffs) > 20 else ""
    listed_notes = both.get("notes")
    notes = "".join(
        f"<li>{escape(str(n))}</li>"
        for n in (listed_notes if isinstance(listed_notes, list) else [])
    )
    summary = (
        f"The first difference is at step {first}."
        if first is not None
        else "Real QEMU 7.2 answered every step as blocksim did."
    )
    return [
        '<h2 id="qemu">Real QEMU 7.2 and blocksim, step by step</h2>',
        f"<p>{escape(summary)} Each side's response and the events that arrived during the "
        "step (QEMU may deliver a job's events a step later; events are compared as one "
        "ordered list). Written by <code>blocksim triage</code>.</p>",
        f'<table class="sbs"><tr>{head}</tr>{"".join(rows)}</table>',
        f"<h3>Differences ({len(diffs)})</h3><ul>{listed}{more}</ul>" if diffs else "",
        f'<ul class="skipped">{notes}</ul>' if notes else "",
    ]
