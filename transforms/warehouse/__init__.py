"""Warehouse backends behind one interface; ``open_warehouse(url)`` picks one by URL scheme."""
from __future__ import annotations

from cx360.transforms.warehouse.base import Batch, Warehouse, WarehouseError
from cx360.transforms.warehouse.spec import TABLES, TableSpec


def open_warehouse(url: str, read_only: bool = False) -> Warehouse:
    """``duckdb:PATH`` (default backend). Other schemes are added by their backends."""
    if url.startswith("duckdb:") or url.endswith(".duckdb"):
        from cx360.transforms.warehouse.duckdb_backend import DuckDBWarehouse

        return DuckDBWarehouse(url, read_only=read_only)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise WarehouseError(f"unsupported warehouse URL {url!r} (scheme {scheme!r}; "
                         "supported: duckdb:PATH)")


__all__ = ["Batch", "TABLES", "TableSpec", "Warehouse", "WarehouseError", "open_warehouse"]
