"""Service settings: one `Settings(BaseSettings)`, read from `MOMO_*` environment variables.

Every field is also a `momo serve` flag with the same name (`max_batch` <-> `--max-batch` <->
`MOMO_MAX_BATCH`); flags win over the environment, the environment over the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from service.jobs.settings import JobSettings

MIB = 1024 * 1024


class Settings(JobSettings):  # fine-tuning job settings (service/jobs/settings.py) are inherited
    model_config = SettingsConfigDict(env_prefix="MOMO_", extra="ignore", validate_default=True)

    # --- network ---------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    # Longer than the idle timeouts of the usual clients and load balancers (httpx 5 s, aiohttp 15 s,
    # nginx upstream and AWS ALB 60 s, Go 90 s): the client, not the server, should close an idle
    # connection, or a request can be sent on a connection the server is closing (a reset).
    keep_alive_timeout_s: float = Field(
        default=120.0, gt=0, description="Idle keep-alive connections are closed after this long."
    )
    header_timeout_s: float = Field(
        default=15.0, gt=0, description="A request head must arrive within this time (slow clients)."
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="API processes sharing the port (each loads the model once, intra-op threads split "
        "between them); default: one per CPU core up to 8 on CPU, 1 on a GPU.",
    )
    limit_concurrency: int = Field(
        default=1024, ge=1, description="Connections and requests held at once; above it, 503."
    )

    # --- model -------------------------------------------------------------------------------------
    model_store: Path = Field(default=Path("model_store"), description="Model store directory.")
    model: str | None = Field(
        default=None, description="Model to serve: name, name:version or path; default: active."
    )
    runtime: Literal["onnx", "onnx-int8", "torch", "torchscript", "auto"] = Field(
        default="onnx",
        description="Inference runtime; auto: the fastest at warm-up within parity (shown by /v1/models).",
    )
    runtime_auto_tolerance: float = Field(
        default=2e-3,
        gt=0,
        description="runtime=auto: largest absolute embedding difference to ONNX fp32 a candidate may have.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto (GPU when present) | cpu | cuda."
    )
    threads: int | None = Field(
        default=None, ge=1, description="Intra-op threads of the runtime (default: its own)."
    )
    torchscript: bool = Field(default=False, description="torch runtime: run a TorchScript trace.")
    model_follow_s: float | None = Field(
        default=None,
        ge=0,
        description="Follow the store's active version, checked this often (seconds; 0: off): how an "
        "activation reaches every worker and replica. Default: 1 with several workers, else off.",
    )
    runtime_cache_dir: Path | None = Field(default=None, description="Where exported graphs are cached.")

    # --- data --------------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("var/service"), description="Where the service keeps its data.")
    collections_url: str | None = Field(
        default=None,
        description="Collection store: sqlite:///<path> (embedded, default <data_dir>/collections.db; "
        "a local disk only) or postgresql://user:password@host/db (pgvector, for several replicas).",
    )
    collections_fsync: bool = Field(
        default=True, description="Embedded store: fsync every commit (durable across power loss)."
    )
    max_collection_items: int = Field(default=1_000_000, ge=1, description="Items per collection.")
    ann_threshold: int = Field(
        default=20_000, ge=1, description="Collections with index=auto use HNSW from this many items."
    )
    ann_ef_search: int = Field(
        default=400, ge=1, le=10_000, description="HNSW candidates per query (higher: better recall, slower)."
    )
    ann_rescore: int = Field(
        default=2,
        ge=1,
        le=100,
        description="ANN fetches top_k x this many candidates and re-scores them exactly.",
    )
    ann_m: int = Field(default=32, ge=4, le=128, description="HNSW links per node (memory, recall).")
    ann_ef_construction: int = Field(default=64, ge=8, le=2000, description="HNSW build-time candidate list.")
    ann_build_memory: str = Field(
        default="1GB",
        pattern=r"^\d+(kB|MB|GB)$",
        description="PostgreSQL maintenance_work_mem for HNSW builds.",
    )

    # --- auth --------------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted API keys (comma-separated in the environment)."
    )
    auth_disabled: bool = Field(default=False, description="Serve without API keys (local use only).")
    metrics_auth: bool = Field(
        default=True, description="/metrics needs an API key too (off: open, e.g. on a private network)."
    )

    # --- micro-batching ----------------------------------------------------------------------------
    batching: bool = Field(default=True, description="Micro-batching on (off = batches of one).")
    max_batch: int = Field(default=32, ge=1, le=4096, description="Items per inference batch.")
    max_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Text batches: at most this many padded tokens (items x longest); default: "
        "max_batch x the model's text length.",
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description="A free inference worker lingers this long for a fuller batch (0: it takes what "
        "is queued at once; batches grow while it is busy).",
    )
    queue_size: int = Field(default=1024, ge=1, description="Items waiting per queue before 429.")
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest wait for an inference result (503)."
    )

    # --- limits ------------------------------------------------------------------------------------
    max_items_per_request: int = Field(
        default=256, ge=1, description="Inputs (or collection items) per request."
    )
    max_text_chars: int = Field(default=20_000, ge=1, description="Characters per text input (longer: 400).")
    text_overflow: Literal["truncate", "error"] = Field(
        default="truncate",
        description="Texts over the model's token limit: truncate (reported) or refuse (400).",
    )
    max_image_bytes: int = Field(default=10 * MIB, ge=1, description="Encoded bytes per image.")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Width x height per image (decompression bombs)."
    )
    max_body_bytes: int = Field(
        default=32 * MIB, ge=1, description="Request body size (413), counted while streaming."
    )
    max_labels: int = Field(default=512, ge=1, description="Labels per zero-shot classification request.")
    max_top_k: int = Field(default=1000, ge=1, description="Largest top_k for search / answers.")
    classify_template: str = Field(
        default="a photo of a {label}", description="Default zero-shot prompt template."
    )

    # --- image URLs --------------------------------------------------------------------------------
    image_urls_enabled: bool = Field(default=False, description="Accept http(s) image URLs (off by default).")
    image_url_timeout_s: float = Field(default=5.0, gt=0, description="Total time to fetch one image URL.")
    image_url_max_redirects: int = Field(
        default=3, ge=0, le=10, description="Redirects followed (each re-checked)."
    )

    # --- ops ---------------------------------------------------------------------------------------
    log_level: str = Field(default="info", description="Logging level.")
    log_json: bool = Field(default=True, description="Structured JSON logs.")
    access_log: bool = Field(default=True, description="The access log: a line per request (see the sample).")
    access_log_sample: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Fraction of successful requests logged (errors always are; 1: every request). "
        "A line costs ~50 µs of event-loop CPU, ~15 % of a one-text embedding request (measured).",
    )
    docs_enabled: bool = Field(default=True, description="Serve /docs and /openapi.json.")
    ui_enabled: bool = Field(default=True, description="Serve the web playground at /ui.")
    tracing: bool = Field(
        default=False, description="OpenTelemetry spans over OTLP (needs `pip install momo[tracing]`)."
    )
    tracing_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (default: OTEL_* vars).",
    )
    tracing_service_name: str = Field(default="momo", description="service.name of the spans.")
    gc_freeze: bool = Field(
        default=True, description="Freeze the start-up heap out of the cyclic GC (fewer latency spikes)."
    )
    test_hooks: bool = Field(default=False, description="Expose fault-injection hooks (tests only).")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("classify_template")
    @classmethod
    def _template_has_label(cls, value: str) -> str:
        if "{label}" not in value:
            raise ValueError("classify_template must contain '{label}'")
        return value

    @model_validator(mode="after")
    def _auth_configured(self) -> Settings:
        if not self.auth_disabled and not self.api_keys:
            raise ValueError(
                "no API keys configured: set MOMO_API_KEYS (or --api-keys) to a comma-separated list, "
                "or disable authentication explicitly with MOMO_AUTH_DISABLED=true (--auth-disabled)"
            )
        return self

    @property
    def follow_interval_s(self) -> float:
        if self.model_follow_s is not None:
            return self.model_follow_s
        return 1.0 if (self.workers or 1) > 1 else 0.0

    @property
    def effective_max_batch(self) -> int:
        return self.max_batch if self.batching else 1

    @property
    def auth_enabled(self) -> bool:
        return not self.auth_disabled
