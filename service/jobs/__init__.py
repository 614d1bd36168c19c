"""Fine-tuning jobs (DESIGN §6): job records (`tables`, `records`, `repository`, `leases`, and
`database` with its Alembic `migrations/`), settings, dataset uploads, the HTTP router and the
API-side service (sending tasks by name, the stale-job sweeper, the embedded worker).

Nothing here imports `training`: the API process uses all of it; the worker side
(`service.worker`, `service.celery_tasks`) adds the training code. README: "Fine-tuning jobs".
"""
