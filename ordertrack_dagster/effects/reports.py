"""The per-run reports (contract §7): alert log, query log and email summary, built purely.

Each is built once, when the run's effects execute, and stored in the outbox as it will be
delivered, so a retry on a later run sends exactly what this run saw.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from ordertrack_dagster.effects.messages import courier_label, slack_escape, slack_link
from ordertrack_dagster.flows import Flow, also_claimed_by, get_flow
from ordertrack_dagster.resources.s3 import key_part

ALERT_LINK_DAYS = 6
QUERY_LINK_DAYS = 3
EXAMPLES_PER_KIND = 3
EXAMPLE_CHARS = 200  # keeps the Slack summary short whatever the couriers answered

#: Alert kinds, in the order the summary lists them.
ALERT_KINDS = (
    "rate_limited",
    "api_failure",
    "token_failure",
    "missing_awb",
    "unmapped_status",
    "reference_mismatch",
    "refused_move",
    "rejected_write",
    "shared_tracking_key",
    "two_flows",
    "odd_tracking_key",
    "other",
)
_OUTCOME_KINDS = {
    "unmapped": "unmapped_status",
    "reference_mismatch": "reference_mismatch",
    "not_found": "missing_awb",
    "deferred": "rate_limited",
}


def log_key(prefix: str, folder: str, flow_key: str, run_id: str, when: datetime, ext: str) -> str:
    """`<prefix>/<folder>/flow=<flow>/date=<YYYY-MM-DD>/<run_id>.<ext>`, like the history."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"{base}{folder}/flow={key_part(flow_key)}/date={when:%Y-%m-%d}/{key_part(run_id)}.{ext}"


def _text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)


def classify_alert(outcome: str | None, action: str | None, message: str) -> str:
    """Which of the contract's alert kinds a message is, from the row's outcome and action.

    The write's action comes first: a rejected write is its own condition, whatever the
    courier answered."""
    if action == "rejected":
        return "rejected_write"
    if action == "refused":
        return "refused_move"
    if outcome in _OUTCOME_KINDS:
        return _OUTCOME_KINDS[outcome]
    if outcome == "failed":
        if message.startswith("login failed") or "credentials refused" in message:
            return "token_failure"
        if message.startswith("odd tracking key"):
            return "odd_tracking_key"
        if message.startswith("shared tracking key"):
            return "shared_tracking_key"
        return "api_failure"
    return "other"


def _line(
    flow_key: str, run_id: str, now: datetime, kind: str, source: str, row: Any, **fields: Any
) -> dict[str, Any]:
    return {
        "time": now.isoformat(),
        "flow": flow_key,
        "run_id": run_id,
        "kind": kind,
        "source": source,
        "order_id": _text(row.order_id),
        "tracking_key": _text(row.tracking_key),
        **fields,
    }


def claim_alert(flow: Flow, booking_courier: str | None) -> str | None:
    """Why an order of the selection is this flow's though other flows match it too, or None."""
    others = also_claimed_by(flow, booking_courier)
    if not others:
        return None
    names = ", ".join(other.key for other in others)
    return (
        f"two flows would track this order: bookingCourier {booking_courier!r} also matches "
        f"{names}; tracked by {flow.key} only (the aggregator the booking went through first)"
    )


def alert_lines(
    flow_key: str,
    run_id: str,
    updates: pd.DataFrame,
    writes: pd.DataFrame,
    now: datetime,
    pending: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """One JSON-able line per alert of the run: the selection's (an order other flows match
    too, from `pending`), the mapping's, then the write's own.

    A fetch error (HTTP status, rate limit, login failure) reaches `status_updates.alert`
    verbatim for each order it concerns. `order_status_writes.alert` repeats the mapping's
    alert unless the write raised its own (a refused move), so a write alert is listed only
    when it differs.
    """
    lines: list[dict[str, Any]] = []
    flow = get_flow(flow_key)
    for row in () if pending is None else pending.itertuples(index=False):
        message = claim_alert(flow, _text(row.bookingCourier))
        if message:
            lines.append(
                _line(flow_key, run_id, now, "two_flows", "selection", row, outcome=None,
                      action=None, message=message)
            )  # fmt: skip
    mapping_alerts = {row.order_oid: _text(row.alert) for row in updates.itertuples(index=False)}
    for row in writes.itertuples(index=False):
        outcome, action = _text(row.outcome), _text(row.action)
        found = mapping_alerts.get(row.order_oid)
        own = _text(row.alert)
        for source, message in (("mapping", found), ("write", own if own != found else None)):
            if not message:
                continue
            kind = classify_alert(outcome, action if source == "write" else None, message)
            lines.append(
                _line(flow_key, run_id, now, kind, source, row, outcome=outcome, action=action,
                      message=message)
            )  # fmt: skip
    return lines


def jsonl(lines: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def alert_summary(lines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per kind and a few distinct example messages of each."""
    counts = Counter(str(line["kind"]) for line in lines)
    examples: dict[str, list[str]] = {}
    for line in lines:
        kept = examples.setdefault(str(line["kind"]), [])
        example = str(line["message"])[:EXAMPLE_CHARS]
        if len(kept) < EXAMPLES_PER_KIND and example not in kept:
            kept.append(example)
    ordered = sorted(counts, key=lambda kind: (ALERT_KINDS + (kind,)).index(kind))
    return {
        "total": len(lines),
        "by_kind": {kind: counts[kind] for kind in ordered},
        "examples": {kind: examples[kind] for kind in ordered},
    }


def alert_log_text(
    flow_key: str, run_id: str, summary: Mapping[str, Any], total: int, url: str
) -> str | None:
    """The Slack post for an alert log: a grouped summary of the alerts new in the run (`summary`
    counts only those) and the link to the log of all `total`; None when none is new."""
    if not summary["total"]:
        return None
    lines = [
        f":warning: *{slack_escape(courier_label(flow_key))} tracking alerts*: "
        f"{summary['total']} new in run `{slack_escape(run_id)}` ({total} in all)"
    ]
    for kind, count in summary["by_kind"].items():
        examples = "; ".join(slack_escape(example) for example in summary["examples"][kind])
        lines.append(f"• {kind.replace('_', ' ')}: {count} (e.g. {examples})")
    lines.append(slack_link(url, f"Alert log (JSON lines, link valid {ALERT_LINK_DAYS} days)"))
    return "\n".join(lines)


def query_log_document(flow_key: str, run_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The query log: the MongoDB filter, sort and cap of the selection and how many matched."""
    return {
        "flow": flow_key,
        "run_id": run_id,
        "selected": metadata.get("selected"),
        "cap": metadata.get("cap"),
        "filter": metadata.get("filter"),
        "sort": metadata.get("sort"),
    }


def query_log_text(flow_key: str, run_id: str, selected: Any, url: str) -> str:
    label = slack_escape(courier_label(flow_key))
    return (
        f":mag: *{label} selection*: {slack_escape(selected)} orders selected in run "
        f"`{slack_escape(run_id)}`\n"
        + slack_link(url, f"Query log (filter, sort, count; link valid {QUERY_LINK_DAYS} days)")
    )


@dataclass(frozen=True)
class RunSummary:
    """What the email reports for one flow run."""

    flow_key: str
    run_id: str
    figures: Mapping[str, int]  # `run_summary.summarise`
    per_status: Mapping[str, int]  # `run_summary.summary_per_status`
    duration_seconds: float | None
    run_url: str | None
    alerts: int = 0  # alert lines of the run (its alert log)
    new_alerts: int = 0  # of which announced for the first time


def _rows(summary: RunSummary) -> list[tuple[str, str]]:
    figures = summary.figures
    rows = [
        ("Selected", figures.get("selected", 0)),
        ("Polled", figures.get("polled", 0)),
        ("Updated", figures.get("updated", 0)),
        *((f"Updated to {status}", count) for status, count in summary.per_status.items()),
        ("No change", figures.get("no_change", 0)),
        ("Unmapped", figures.get("unmapped", 0)),
        ("Refused (would go backwards)", figures.get("refused", 0)),
        ("Reference mismatch", figures.get("reference_mismatch", 0)),
        ("Not found", figures.get("not_found", 0)),
        ("Failed", figures.get("failed", 0)),
        ("Rate-limited (deferred)", figures.get("deferred", 0)),
        ("Alerts", f"{summary.alerts} ({summary.new_alerts} new)"),
    ]
    duration = (
        "unknown" if summary.duration_seconds is None else f"{summary.duration_seconds:.1f} s"
    )
    return [(label, str(value)) for label, value in rows] + [("Duration", duration)]


def render_email(summary: RunSummary) -> dict[str, str]:
    """Subject, plain-text and HTML parts of the run's summary email."""
    label = courier_label(summary.flow_key)
    figures = summary.figures
    subject = (
        f"ordertrack {label}: {figures.get('updated', 0)} updated, "
        f"{figures.get('failed', 0)} failed of {figures.get('selected', 0)} selected"
    )
    rows = _rows(summary)
    width = max(len(name) for name, _ in rows)
    text_lines = [f"Tracking run {summary.run_id} ({label}, flow {summary.flow_key})", ""]
    text_lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    if summary.run_url:
        text_lines += ["", f"Run: {summary.run_url}"]
    cells = "\n".join(
        f"<tr><th align='left'>{html.escape(name)}</th>"
        f"<td align='right'>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    link = (
        f"<p><a href='{html.escape(summary.run_url, quote=True)}'>Open the run in Dagster</a></p>"
        if summary.run_url
        else ""
    )
    body = (
        "<html><body>"
        f"<h2>{html.escape(label)} tracking run</h2>"
        f"<p>Run <code>{html.escape(summary.run_id)}</code>, flow "
        f"<code>{html.escape(summary.flow_key)}</code></p>"
        f"<table border='1' cellpadding='4' cellspacing='0'>\n{cells}\n</table>{link}"
        "</body></html>"
    )
    return {"subject": subject, "text": "\n".join(text_lines) + "\n", "html": body}
