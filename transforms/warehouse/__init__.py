"""Warehouse backends behind one interface; ``open_warehouse(url)`` picks one by URL scheme."""
from __future__ import annotations

from cx360.transforms.warehouse.base import Batch, Warehouse, WarehouseError
from cx360.transforms.warehouse.spec import TABLES, TableSpec

SUPPORTED = ("duckdb:PATH", "postgresql://USER@HOST:PORT/DB", "bigquery://PROJECT/DATASET")


def display_url(url: str) -> str:
    """The URL with any password replaced by ``***``: for logs and printed summaries."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def is_duckdb_url(url: str) -> bool:
    """``duckdb:...`` or a path ending in .duckdb (options may follow after ``?``)."""
    return url.startswith("duckdb:") or url.partition("?")[0].endswith(".duckdb")


def open_warehouse(url: str, read_only: bool = False) -> Warehouse:
    """``duckdb:PATH`` (default backend), ``postgresql://...`` (or ``postgres://``) and
    ``bigquery://PROJECT/DATASET[?endpoint=...]`` (or ``bigquery:PROJECT.DATASET``); see
    docs/warehouse.md."""
    if is_duckdb_url(url):
        from cx360.transforms.warehouse.duckdb_backend import DuckDBWarehouse

        return DuckDBWarehouse(url, read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from cx360.transforms.warehouse.postgres_backend import PostgresWarehouse
        except ImportError as exc:
            raise WarehouseError(f"the PostgreSQL backend needs psycopg: pip install "
                                 f"'cx360[postgres]' ({exc})") from None
        return PostgresWarehouse(url, read_only=read_only)
    if url.startswith("bigquery:"):
        try:
            from cx360.transforms.warehouse.bigquery_backend import BigQueryWarehouse
        except ImportError as exc:
            raise WarehouseError(f"the BigQuery backend needs google-cloud-bigquery: pip install "
                                 f"'cx360[gcp]' ({exc})") from None
        return BigQueryWarehouse(url, read_only=read_only)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise WarehouseError(f"unsupported warehouse URL {url!r} (scheme {scheme!r}; "
                         f"supported: {', '.join(SUPPORTED)})")


__all__ = ["Batch", "TABLES", "TableSpec", "Warehouse", "WarehouseError", "open_warehouse"]
