"""Settings of the fine-tuning job system, shared by the API (`Settings` inherits them, so each is a
`momo serve` flag too) and the worker (`momo worker` reads only these: it needs no API keys).

Every field is an environment variable `MOMO_<NAME>`. The defaults need no other server: job records
in SQLite under `data_dir`, and the *embedded broker* — kombu's SQLAlchemy transport on a SQLite file
(`sqla+sqlite:///<data_dir>/broker.sqlite`) — with a `momo worker` subprocess started by `momo serve`.
Deployment sets `MOMO_BROKER_URL=redis://…` (and usually `MOMO_RESULT_BACKEND`, and PostgreSQL in
`MOMO_DATABASE_URL` when workers run on several hosts) and runs `momo worker` containers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024
EMBEDDED_SCHEMES = ("sqla+sqlite", "sqlalchemy+sqlite")


def sqlite_url(path: Path, prefix: str = "sqlite") -> str:
    """`sqlite:////abs/path` for a path (made absolute, so other processes resolve it the same)."""
    return f"{prefix}:///{path.expanduser().absolute()}"


class JobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOMO_", extra="ignore", validate_default=True)

    model_store: Path = Field(default=Path("model_store"), description="Model store directory.")
    data_dir: Path = Field(
        default=Path("var/service"), description="Service data (collections, job database)."
    )

    # --- fine-tuning jobs ---------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="Job records (SQLAlchemy URL): default sqlite:///<data_dir>/jobs.db; "
        "postgresql+psycopg://user:password@host/db for several hosts.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker, e.g. redis://127.0.0.1:6379/0; default: the embedded broker "
        "sqla+sqlite:///<data_dir>/broker.sqlite (no server needed).",
    )
    result_backend: str | None = Field(
        default=None,
        description="Celery result backend, e.g. redis://127.0.0.1:6379/1; default: none (the job "
        "records hold every result).",
    )
    data_root: Path | None = Field(
        default=None,
        description="Fine-tuning datasets: uploads are stored here and dataset paths must lie under it "
        "(default <data_dir>/datasets).",
    )
    job_queue: str = Field(
        default="momo-finetune", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Celery queue of fine-tunes."
    )
    job_worker: Literal["auto", "always", "off"] = Field(
        default="auto",
        description="Run a `momo worker` subprocess beside the API: auto = with the embedded broker "
        "(started at the first job), always, or off (workers run elsewhere).",
    )
    job_concurrency: int = Field(default=1, ge=1, le=64, description="Fine-tunes one worker runs at once.")
    job_time_limit_s: float = Field(
        default=6 * 3600, ge=10, description="Soft time limit of one fine-tune (hard limit: +60 s)."
    )
    job_heartbeat_s: float = Field(default=5.0, gt=0, le=300, description="Worker heartbeat interval.")
    job_stale_after_s: float = Field(
        default=120.0, gt=0, description="A running job without a heartbeat this long is requeued or failed."
    )
    job_max_attempts: int = Field(
        default=3, ge=1, le=20, description="Runs of one job (a lost worker counts as one) before it fails."
    )
    job_sweep_interval_s: float = Field(
        default=10.0, gt=0, description="How often the API looks for stale jobs and refreshes job metrics."
    )
    job_requeue_after_s: float = Field(
        default=900.0,
        gt=0,
        description="Re-send a job still queued after this long (its message may have been lost with "
        "the broker); duplicates are ignored.",
    )
    job_threads: int | None = Field(default=None, ge=1, description="torch threads per fine-tune.")
    job_device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Fine-tuning device.")
    job_export_onnx: bool = Field(default=True, description="Export ONNX graphs into each new version.")
    job_step_delay_s: float = Field(
        default=0.0, ge=0, le=10, description="Testing only: pause after every training step."
    )
    max_upload_bytes: int = Field(default=512 * MIB, ge=1, description="Size of one dataset upload (413).")
    max_upload_entries: int = Field(default=200_000, ge=1, description="Files in one uploaded zip.")
    max_upload_extracted_bytes: int = Field(
        default=4096 * MIB, ge=1, description="Uncompressed size of one uploaded zip (zip bombs)."
    )

    @model_validator(mode="after")
    def _heartbeat_below_stale(self) -> JobSettings:
        if self.job_stale_after_s < 2 * self.job_heartbeat_s:
            raise ValueError(
                f"job_stale_after_s ({self.job_stale_after_s}) must be at least twice job_heartbeat_s "
                f"({self.job_heartbeat_s}), or live jobs would be taken for dead"
            )
        return self

    # --- resolved values ----------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir / "jobs.db")

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or sqlite_url(self.data_dir / "broker.sqlite", "sqla+sqlite")

    @property
    def embedded_broker(self) -> bool:
        """True for a broker that lives in a local file (the one-command start)."""
        return self.resolved_broker_url.split("://", 1)[0].lower() in EMBEDDED_SCHEMES

    @property
    def resolved_data_root(self) -> Path:
        return (self.data_root or self.data_dir / "datasets").expanduser().absolute()

    @property
    def hard_time_limit_s(self) -> float:
        return self.job_time_limit_s + 60.0

    def worker_environment(self) -> dict[str, str]:
        """The environment that gives a `momo worker` subprocess exactly these settings."""
        env = {
            "MOMO_MODEL_STORE": str(self.model_store.expanduser().absolute()),
            "MOMO_DATA_DIR": str(self.data_dir.expanduser().absolute()),
            "MOMO_DATABASE_URL": self.resolved_database_url,
            "MOMO_BROKER_URL": self.resolved_broker_url,
            "MOMO_DATA_ROOT": str(self.resolved_data_root),
        }
        for name in JobSettings.model_fields:
            if name in ("model_store", "data_dir", "database_url", "broker_url", "data_root"):
                continue
            value = getattr(self, name)
            if value is not None:
                env[f"MOMO_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env
