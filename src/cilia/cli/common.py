"""Options and helpers shared by every CLI command: which agent to talk to, how to print."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cilia.paths import NodePaths, default_node_name

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and scripts


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


NodeOption = typer.Option(None, "--node", "-n", envvar="CILIA_NODE", help="node whose agent to ask")
SocketOption = typer.Option(None, "--socket", envvar="CILIA_SOCKET", help="agent API socket (overrides --node)")
OutputOption = typer.Option(Output.TABLE, "--output", "-o", help="table for people, json for scripts")


def agent_socket(node: str | None, socket: Path | None) -> Path:
    if socket is not None:
        return socket
    return NodePaths(node or default_node_name()).socket


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        # escaped: "[fd00::1]:80" is an address, not rich markup
        table.add_row(*("" if cell is None else escape(str(cell)) for cell in row))
    console.print(table)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error for a person and return the Exit to raise."""
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
