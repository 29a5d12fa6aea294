"""`cilia-agent`: parse flags, start the agent, serve until SIGTERM/SIGINT."""

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
