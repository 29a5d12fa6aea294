"""`cilia-agent`: parse flags, start the agent, serve until SIGTERM/SIGINT (the datapath stays);
`cilia-agent --cleanup` removes the node networking's rules and router addresses instead."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from cilia.agent.config import parse_config


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.cleanup:
        from cilia.netlink.node import NodeNetConfig, teardown_node_networking

        teardown_node_networking(NodeNetConfig(
            router_ipv4=config.ipv4_pod_cidr.network_address + 1 if config.ipv4_pod_cidr else None,
            router_ipv6=config.ipv6_pod_cidr.network_address + 1 if config.ipv6_pod_cidr else None,
            ipv4_pod_cidr=config.ipv4_pod_cidr, ipv6_pod_cidr=config.ipv6_pod_cidr,
            underlay_device=config.underlay_device))
        logging.getLogger(__name__).info("node %s: cilia's nat rules removed", config.node)
        return
    from cilia.agent.daemon import Agent  # heavy imports only after flags parsed (fast --help)

    agent = Agent(config)
    config.paths.run_dir.mkdir(parents=True, exist_ok=True)
    config.paths.pid_file.write_text(f"{os.getpid()}\n")
    try:
        agent.start()
        asyncio.run(agent.serve())
    except KeyboardInterrupt:
        pass
    finally:
        config.paths.pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
