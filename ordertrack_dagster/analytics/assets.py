"""The `sql/` models as assets of group `analytics`: one asset per file, found when the code
location loads, so adding a file adds an asset.

An asset's key is `analytics/<file name>`, its description the file's header, its lineage the
tracking assets its query reads. Its result is stored by the Parquet IO manager at
`<prefix>/analytics/<model>.parquet` and previewed in the materialization's metadata.
"""

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    ConfigurableResource,
    MetadataValue,
    Output,
    asset,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ordertrack_dagster.analytics.history import DEFAULT_PREFIX, HistoryStore
from ordertrack_dagster.analytics.models import (
    SQL_DIR,
    SqlModel,
    discover_models,
    run_model,
    s3_filesystem,
)

GROUP = "analytics"
#: Who answers for the models over the history.
OWNERS = ["team:analytics"]
IO_MANAGER = "parquet_io_manager"
PREVIEW_ROWS = 20
DEFAULT_LOOKBACK_DAYS = 7


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


def sql_model_asset(model: SqlModel) -> AssetsDefinition:
    """The asset that runs one model over every flow's history and stores its result."""

    @asset(
        name=model.name,
        key_prefix=GROUP,
        group_name=GROUP,
        owners=OWNERS,
        description=model.description,
        deps=[AssetKey(view) for view in model.views],
        io_manager_key=IO_MANAGER,
        kinds={"duckdb", "sql", "parquet"},
        metadata={"sql": MetadataValue.md(f"```sql\n{model.sql.strip()}\n```")},
    )
    def _model(
        context: AssetExecutionContext, config: SqlModelConfig, history: HistoryResource
    ) -> Output[pd.DataFrame]:
        frame = run_model(
            model,
            history.store(),
            history.filesystem(),
            as_of=datetime.now(UTC),
            lookback_days=config.lookback_days,
            params=config.params,
        )
        context.log.info(f"{model.name}: {len(frame)} rows over {config.lookback_days} run days")
        return Output(frame, metadata=preview_metadata(frame))

    return _model


def sql_model_assets(folder: Path = SQL_DIR) -> list[AssetsDefinition]:
    """One asset per `*.sql` file of the folder."""
    return [sql_model_asset(model) for model in discover_models(folder)]
