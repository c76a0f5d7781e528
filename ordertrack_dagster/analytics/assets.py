"""The `sql/` models as assets of group `analytics`: one asset per file, found when the code
location loads, so adding a file adds an asset.

An asset's key is `analytics/<file name>`, its description the file's header, its lineage the
tracking assets its query reads, its columns (`dagster/column_schema`) what the query returns.
Its result is stored by the Parquet IO manager at `<prefix>/analytics/<model>.parquet` and
previewed in the materialization's metadata with its row count and the run days it covers.

Each model keeps itself current through its automation condition (the instance's default
automation condition sensor evaluates it): after a tracking run wrote what it reads, at most
once per `REFRESH_INTERVAL_CRON` window; a model whose header says `-- @cron ...` (a heavier
one) once per tick of that cron instead.
"""

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    Config,
    ConfigurableResource,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ordertrack_dagster.analytics.history import DEFAULT_PREFIX, HistoryStore
from ordertrack_dagster.analytics.models import (
    SQL_DIR,
    SqlModel,
    discover_models,
    history_window,
    model_schema,
    run_model,
    s3_filesystem,
)

GROUP = "analytics"
#: Who answers for the models over the history.
OWNERS = ["team:analytics"]
IO_MANAGER = "parquet_io_manager"
PREVIEW_ROWS = 20
DEFAULT_LOOKBACK_DAYS = 7
#: A model refreshed after tracking writes runs at most once per window of this cron (UTC):
#: flows write every few minutes, and a model reads a week of every flow's history.
REFRESH_INTERVAL_CRON = "*/30 * * * *"


class HistoryResource(ConfigurableResource):
    """Where the tracking history lives (the IO manager's bucket and prefix), for the models."""

    s3: S3Resource
    bucket: str = Field(description="AWS_S3_BUCKET")
    prefix: str = Field(default=DEFAULT_PREFIX, description="key prefix inside the bucket")

    def store(self) -> HistoryStore:
        return HistoryStore(self.s3.get_client(), self.bucket, self.prefix)

    def filesystem(self) -> pafs.S3FileSystem:
        """The same endpoint and credentials as the boto3 client, for pyarrow's scans."""
        return s3_filesystem(
            self.s3.endpoint_url,
            self.s3.region_name,
            self.s3.aws_access_key_id,
            self.s3.aws_secret_access_key,
            self.s3.aws_session_token,
        )


class SqlModelConfig(Config):
    """Run config of a SQL model; the defaults are what a plain materialization uses."""

    lookback_days: int = Field(
        default=DEFAULT_LOOKBACK_DAYS,
        description="run days of history the views hold, ending today (UTC)",
    )
    params: dict[str, str] = Field(
        default_factory=dict,
        description="values for the parameters the model's header declares (`$name = default`)",
    )


def preview_metadata(frame: pd.DataFrame) -> dict[str, MetadataValue | int]:
    """The first rows as a markdown table, and the row count, for the asset's page."""
    preview = frame.head(PREVIEW_ROWS).to_markdown(index=False) if len(frame) else "_no rows_"
    return {"preview": MetadataValue.md(preview), "dagster/row_count": len(frame)}


def model_metadata(
    frame: pd.DataFrame, columns: TableSchema, window: tuple[date, date]
) -> dict[str, Any]:
    """What a materialization shows on the model's page: a preview, the row count, the
    columns and the run days the views held."""
    first, last = window
    return {
        **preview_metadata(frame),
        "dagster/column_schema": columns,
        "history_window": MetadataValue.text(f"{first} to {last} (UTC run days)"),
    }


def column_schema(schema: pa.Schema) -> TableSchema:
    """The model's columns as the asset page's column list (DuckDB's Arrow types, as text)."""
    return TableSchema(columns=[TableColumn(field.name, str(field.type)) for field in schema])


def refresh_condition(model: SqlModel) -> AutomationCondition:
    """When the model is stale. After the tracking writes it reads (any flow's run of a
    dependency), unless it was already requested in the current `REFRESH_INTERVAL_CRON`
    window, in which case the next window picks the writes up; with a header `@cron`, once
    per tick of that cron. Runs of other flows still in progress hold nothing back: the
    model reads only stored runs."""
    idle = ~AutomationCondition.in_progress()
    if model.cron:
        tick = AutomationCondition.cron_tick_passed(model.cron).since_last_handled()
        return (tick & idle).with_label(f"on cron {model.cron} (UTC)")
    written = AutomationCondition.any_deps_updated().since_last_handled()
    requested_this_window = AutomationCondition.newly_requested().since(
        AutomationCondition.cron_tick_passed(REFRESH_INTERVAL_CRON)
    )
    return (written & ~requested_this_window & idle).with_label(
        f"after tracking writes, at most once per {REFRESH_INTERVAL_CRON} window"
    )


def sql_model_asset(model: SqlModel) -> AssetsDefinition:
    """The asset that runs one model over every flow's history and stores its result."""
    columns = column_schema(model_schema(model))

    @asset(
        name=model.name,
        key_prefix=GROUP,
        group_name=GROUP,
        owners=OWNERS,
        description=model.description,
        deps=[AssetKey(view) for view in model.views],
        io_manager_key=IO_MANAGER,
        kinds={"duckdb", "sql", "parquet"},
        metadata={
            "sql": MetadataValue.md(f"```sql\n{model.sql.strip()}\n```"),
            "dagster/column_schema": columns,
        },
        automation_condition=refresh_condition(model),
    )
    def _model(
        context: AssetExecutionContext, config: SqlModelConfig, history: HistoryResource
    ) -> Output[pd.DataFrame]:
        as_of = datetime.now(UTC)
        frame = run_model(
            model,
            history.store(),
            history.filesystem(),
            as_of=as_of,
            lookback_days=config.lookback_days,
            params=config.params,
        )
        window = history_window(as_of, config.lookback_days)
        context.log.info(
            f"{model.name}: {len(frame)} rows over run days {window[0]} to {window[1]}"
        )
        return Output(frame, metadata=model_metadata(frame, columns, window))

    return _model


def sql_model_assets(folder: Path = SQL_DIR) -> list[AssetsDefinition]:
    """One asset per `*.sql` file of the folder."""
    return [sql_model_asset(model) for model in discover_models(folder)]
