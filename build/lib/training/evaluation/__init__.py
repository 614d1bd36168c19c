"""The evaluation suite (`momo eval`): metrics, tasks with baselines, reports.

- `metrics`  — metric functions (accuracy, per-type accuracy, probes, recall@k both ways, chance, macro);
- `suite`    — the tasks of the three groups and the driver `evaluate(artifact, settings)`;
- `report`   — JSON / Markdown / PNG output and the manifest summary;
- `commands` — `register(app)` adding `momo eval`.
"""
