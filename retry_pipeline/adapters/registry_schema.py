"""The Kei-MOTAS contract as DDL: views a Kei-MOTAS DBA creates over their own tables.

The view and column names, and their types, come from the ORM rows the registry reads
(``RegistryBase``), so the DDL printed by ``retry-pipeline registry schema`` is always
the contract of docs/registry.md.
"""

from __future__ import annotations

from sqlalchemy import Column, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from retry_pipeline.adapters.orm import RegistryBase, UTCDateTime

DIALECTS: dict[str, Dialect] = {
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.dialect(),
}

MEANING = {
    "id": "certificate number, unique in the view",
    "vehicle": "chassis number (車台番号) the certificate is for",
    "inspected_on": "inspection date (R2: valid 15 days, the inspection day is day 1)",
    "issued_on": "issue date (R2: valid 9 months)",
    "insurer_id": "insurer code",
    "insurance_no": "insurance certificate number",
    "used_by": "application that already used it, NULL when unused",
    "deleted_at": "when it was withdrawn, NULL when not",
    "available_at": "when the row became visible in Kei-MOTAS (attempts judge 'as of' a slot)",
}


def registry_tables() -> list[Table]:
    """The tables (views) the registry reads, in a stable order."""
    return sorted(RegistryBase.metadata.tables.values(), key=lambda t: t.name)


def _type(column: Column[object], dialect: Dialect) -> str:
    if isinstance(column.type, UTCDateTime):
        return "TIMESTAMP"  # naive UTC
    return str(column.type.compile(dialect=dialect))


def _expression(column: Column[object], alias: str, dialect_name: str) -> str:
    if isinstance(column.type, UTCDateTime) and dialect_name == "postgresql":
        # A timestamptz source column, given as naive UTC (drop AT TIME ZONE for naive UTC).
        return f"({alias}.{column.name} AT TIME ZONE 'UTC')"
    return f"{alias}.{column.name}"


def views_ddl(dialect_name: str = "postgresql", source_schema: str = "keimotas",
              grant_to: str | None = None) -> str:  # fmt: skip
    """``CREATE VIEW`` statements over ``source_schema``'s tables, one per registry table."""
    if dialect_name not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect_name!r}")
    dialect = DIALECTS[dialect_name]
    create = "CREATE OR REPLACE VIEW" if dialect_name == "postgresql" else "CREATE VIEW"
    out = [
        "-- Views read by retry_pipeline (docs/registry.md). Their names, columns and types",
        "-- are the contract; the FROM tables and the source columns are placeholders:",
        f"-- replace {source_schema}.<table> and s.<column> with Kei-MOTAS's own.",
        "-- Instants are naive UTC timestamps.",
        "",
    ]
    for table in registry_tables():
        source = table.name.removeprefix("keimotas_")
        out.append(f"{create} {table.name} AS")
        out.append("SELECT")
        lines = []
        for column in table.columns:
            null = "" if column.nullable else " NOT NULL"
            note = f"  -- {_type(column, dialect)}{null}: {MEANING.get(column.name, '')}"
            expr = f"CAST({_expression(column, 's', dialect_name)} AS {_type(column, dialect)})"
            lines.append((f"    {expr} AS {column.name}", note))
        for i, (sql, note) in enumerate(lines):
            comma = "," if i < len(lines) - 1 else ""
            out.append(f"{sql}{comma}{note}")
        out.append(f"FROM {source_schema}.{source} AS s;")
        indexes = sorted(
            ", ".join(c.name for c in index.columns) for index in table.indexes
        )  # fmt: skip
        for cols in indexes:
            out.append(f"-- index the source table on ({cols}): the registry filters on it")
        if grant_to and dialect_name == "postgresql":
            out.append(f"GRANT SELECT ON {table.name} TO {grant_to};")
        out.append("")
    return "\n".join(out)
