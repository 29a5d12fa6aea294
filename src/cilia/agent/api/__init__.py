"""The agent's HTTP API (served on a unix socket; FastAPI publishes the OpenAPI description).

One router per resource (`endpoints`, `identities`, `policy`, `services`, `bpf`, `flows`,
`resources`, `status`, `config`), each built by a `make_router` that takes the narrow interface
(a Protocol) it reads, never the whole agent. `app.create_app` puts them into one app with the
error handling; the agent's composition root (`cilia.agent.daemon`) wires them to the engines.
"""
