"""FramePack REST API: routes over a `framepack.jobs.service.JobService` (shared by SD.Next and the standalone
server). It knows the service protocol, the request, plan, job and event models and the errors, nothing else of
FramePack; the service is built by a composition root (`framepack.serve`, SD.Next's `scripts/`).

- `api.routes`: `FramePackRoutes` (one method per endpoint) and its `route_table` (endpoints + options, for
  SD.Next's `add_api_route`) and `create_router` (an APIRouter); built per service, no global state
- `api.server`: `create_app` (standalone app: handlers, body limit, auth, lifespan)
- `api.intake`: HTTP body -> `GenerateRequest` (base64-only images, no server paths); `api.aliases`: SD.Next's names
- `api.errors`: the JSON error shape; `api.limits`: body size and strict JSON; `api.auth`: Basic/Bearer auth
- `api.schemas`: response models
- `api.streams`: job event streams (asyncio, heartbeats, a cap per server); `api.tab_gate`: the guard in front
  of the tab that `framepack.serve` mounts (login, hidden files, the error shape for unknown paths)
"""
