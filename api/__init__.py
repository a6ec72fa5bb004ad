"""FramePack REST API: routes over the engine's job manager (shared by SD.Next and the standalone server).

- `api.routes`: `route_table` (plain endpoint functions + options, for SD.Next's `add_api_route`) and
  `create_router` (an APIRouter); built per manager, no global state
- `api.server`: `create_app` (standalone app: handlers, body limit, auth, lifespan) and `serve` (the CLI command)
- `api.intake`: HTTP body -> `GenerateRequest` (base64-only images, no server paths); `api.aliases`: SD.Next's names
- `api.errors`: the JSON error shape; `api.limits`: body size and strict JSON; `api.auth`: Basic/Bearer auth
- `api.schemas`: response models
- `api.streams`: job event streams (asyncio, heartbeats, a cap per server); `api.tab_gate`: the guard in front
  of the tab that `serve` mounts (login, hidden files, the error shape for unknown paths)
"""
