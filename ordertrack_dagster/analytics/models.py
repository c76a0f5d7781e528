"""The SQL models of `sql/`: parsing a file, and running it with DuckDB over the history.

A model is one SELECT in one `.sql` file. Its leading `--` lines describe it, and a line
`-- $name = value  meaning` there declares a parameter the query uses as `$name`; `$as_of`
(the time of the run, UTC) is always available. The query reads the tracking history
through views named after the tracking assets, each with `flow` and `run_date` from the
Hive parts of the keys. The views scan the Parquet objects on S3 with pyarrow, so DuckDB
itself never opens a file or a connection and never installs an extension.

A header line `-- @cron <expression>` refreshes the model on that cron (UTC) instead of
after each tracking write; it is kept out of the description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from ordertrack_dagster.analytics.history import HISTORY_ASSETS, HistoryStore, history_schema
from ordertrack_dagster.flows import FLOWS

# Shipped inside the package (a wheel install has no checkout); `sql/` at the top of the
# repository is a link to this folder.
SQL_DIR = Path(__file__).resolve().parent / "sql"
BUILTIN_PARAMS = frozenset({"as_of"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARAM_LINE = re.compile(r"^\$(?P<name>[A-Za-z_]\w*)\s*=\s*(?P<value>\S+)")
_CRON_LINE = re.compile(r"^@cron\s+(?P<cron>\S+(?:\s+\S+){4})\s*$")
_PARAM_USE = re.compile(r"\$([A-Za-z_]\w*)")
_COMMENT = re.compile(r"--[^\n]*")
# DuckDB sees only the Arrow objects handed to it: no files, no network, no extension loads.
_SANDBOX = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
_PARTITIONS = pa.schema([("flow", pa.string()), ("date", pa.date32())])

ParamValue = int | float | str


def parse_value(text: str) -> ParamValue:
    """A parameter as written in a header or in run config: a number when it reads as one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class SqlModel:
    """One `sql/<name>.sql` file, read."""

    name: str
    sql: str
    description: str
    params: dict[str, ParamValue] = field(default_factory=dict)  # declared, with defaults
    uses: frozenset[str] = frozenset()  # the `$names` the query uses
    views: tuple[str, ...] = ()  # the history views the query reads
    cron: str | None = None  # refreshed on this cron (UTC) rather than after each write

    def bind(self, as_of: datetime, overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The values of the parameters the query uses; `overrides` come from run config."""
        unknown = set(overrides or {}) - set(self.params)
        if unknown:
            raise ValueError(
                f"model {self.name} has no parameter {', '.join(sorted(unknown))}; "
                f"it declares: {', '.join(sorted(self.params)) or 'none'}"
            )
        values: dict[str, Any] = {**self.params, "as_of": as_of.astimezone(UTC)}
        values |= {name: parse_value(text) for name, text in (overrides or {}).items()}
        return {name: values[name] for name in self.uses}  # DuckDB refuses unused names


def parse_model(path: Path) -> SqlModel:
    """Read one model file; a bad name, a missing header or an undeclared `$param` fails here,
    when the code location loads, not in the middle of a run."""
    name = path.stem
    if not _NAME.fullmatch(name):
        raise ValueError(f"{path.name}: a model name is letters, digits and underscores")
    sql = path.read_text()
    header = []
    for line in sql.lstrip().splitlines():
        if not line.startswith("--"):
            break
        header.append(line[2:].strip())
    crons = [match["cron"] for line in header if (match := _CRON_LINE.match(line))]
    if len(crons) > 1:
        raise ValueError(f"{path.name}: one `-- @cron` line at most")
    header = [line for line in header if not line.startswith("@cron")]
    description = "\n".join(header).strip()
    if not description:
        raise ValueError(f"{path.name}: start the file with `--` lines saying what it answers")
    params = {
        match["name"]: parse_value(match["value"])
        for line in header
        if (match := _PARAM_LINE.match(line))
    }
    body = _COMMENT.sub("", sql)
    uses = frozenset(_PARAM_USE.findall(body))
    undeclared = uses - set(params) - BUILTIN_PARAMS
    if undeclared:
        raise ValueError(
            f"{path.name}: declare {', '.join(sorted(undeclared))} in the header "
            "(`-- $name = default  meaning`)"
        )
    views = tuple(view for view in HISTORY_ASSETS if re.search(rf"\b{view}\b", body))
    return SqlModel(name, sql, description, params, uses, views, crons[0] if crons else None)


def discover_models(folder: Path = SQL_DIR) -> list[SqlModel]:
    """Every `*.sql` file of the folder, by name (adding a file adds a model)."""
    return [parse_model(path) for path in sorted(folder.glob("*.sql"))]


def s3_filesystem(
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> pafs.S3FileSystem:
    """pyarrow's S3 client; without keys it uses the AWS default chain (AWS_* variables)."""
    options: dict[str, Any] = {"region": region}
    if endpoint_url:
        endpoint = urlparse(endpoint_url)
        options |= {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme or "https"}
    if access_key_id and secret_access_key:
        options |= {
            "access_key": access_key_id,
            "secret_key": secret_access_key,
            "session_token": session_token,
        }
    return pafs.S3FileSystem(**options)


def history_dataset(
    store: HistoryStore, filesystem: pafs.FileSystem, asset: str, start: date, end: date
) -> ds.Dataset:
    """Every flow's runs of `asset` between two run days, as one Arrow dataset (read lazily:
    DuckDB pushes its column choice and filters into the scan)."""
    paths = [
        f"{store.bucket}/{item.key}"
        for flow in FLOWS
        for item in store.objects(asset, flow, start, end)
    ]
    base = "/".join(part for part in (store.bucket, store.prefix.strip("/"), asset) if part)
    return ds.dataset(
        paths,
        schema=_view_schema(asset),
        format="parquet",
        filesystem=filesystem,
        partitioning=ds.partitioning(_PARTITIONS, flavor="hive"),
        partition_base_dir=base,
    )


def history_window(as_of: datetime, lookback_days: int) -> tuple[date, date]:
    """The first and last UTC run day a model reads: `lookback_days` days ending on `as_of`'s."""
    if lookback_days < 1:
        raise ValueError("lookback_days must be at least 1")
    last = as_of.astimezone(UTC).date()
    return last - timedelta(days=lookback_days - 1), last


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config=_SANDBOX)
    con.execute("SET TimeZone = 'UTC'")  # run days and times read as UTC, as stored
    return con


def _create_view(con: duckdb.DuckDBPyConnection, view: str, source: Any) -> None:
    """The history view `view` over `source` (Arrow data with the Hive `flow` and `date`)."""
    con.register(f"{view}_files", source)
    con.execute(
        f'CREATE VIEW {view} AS SELECT flow, "date" AS run_date, '
        f'* EXCLUDE (flow, "date") FROM {view}_files'
    )


def _view_schema(asset: str) -> pa.Schema:
    # the Hive parts come last; raw responses also store `flow`, which stays one column
    columns = [column for column in history_schema(asset) if column.name not in _PARTITIONS.names]
    return pa.schema([*columns, *_PARTITIONS])


def model_schema(model: SqlModel) -> pa.Schema:
    """The columns the model returns and their types, found by running it over empty views:
    known when the code location loads, before any history exists."""
    with _connect() as con:
        for view in model.views:
            _create_view(con, view, _view_schema(view).empty_table())
        return con.sql(model.sql, params=model.bind(datetime.now(UTC))).to_arrow_table().schema


def run_model(
    model: SqlModel,
    store: HistoryStore,
    filesystem: pafs.FileSystem,
    *,
    as_of: datetime,
    lookback_days: int,
    params: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Run the model over the last `lookback_days` run days up to `as_of` (UTC)."""
    first, last = history_window(as_of, lookback_days)
    values = model.bind(as_of, params)
    with _connect() as con:
        for view in model.views:
            _create_view(con, view, history_dataset(store, filesystem, view, first, last))
        return con.execute(model.sql, values).df()
