"""The `cilia` command: one typer app, each command group in its own module."""

from __future__ import annotations

import typer

from cilia.cli import agent_cmds, fqdn_cmds, lab, node_cmds, observe, policy_cmds, service_cmds

app = typer.Typer(
    name="cilia",
    help="eBPF container networking, security and observability: inspect and drive a cilia node.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
agent_cmds.register(app)
observe.register(app)
policy_cmds.register(app)
service_cmds.register(app)
node_cmds.register(app)
fqdn_cmds.register(app)
app.add_typer(lab.app, name="lab")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
