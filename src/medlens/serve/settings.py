"""Configuration of the clinician web service, validated once at start-up.

Every limit a hostile or careless upload could hit (bytes, pixels, batch size) lives here with a
safe default, so the code that enforces it never invents its own number. Nothing secret is read
from this object's defaults: the optional LLM key is named by an environment variable, never
stored in code or in the settings themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

MB = 1024 * 1024


class ServeSettings(BaseModel):
    """Everything :func:`medlens.serve.create_app` needs; ``run`` builds it from CLI options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundles: list[Path] = Field(min_length=1, description="model bundle folders to serve")
    workspace: Path = Path("medlens-workspace")
    # None: $DATABASE_URL if set, else a SQLite file inside the workspace.
    database_url: str | None = None

    # Uploads.
    max_upload_mb: float = Field(20.0, gt=0)
    max_pixels: int = Field(50_000_000, gt=0)
    max_batch_files: int = Field(200, gt=0)
    max_batch_mb: float = Field(200.0, gt=0)
    keep_dicom_identifiers: bool = False

    # Accounts and sessions. Sign-up is closed by default (accounts come from an administrator),
    # except for the very first account, which becomes the administrator: see accounts.py.
    signup_open: bool = False  # initial state; an admin can open sign-up at run time
    session_hours: float = Field(12.0, gt=0)
    cookie_secure: bool | None = None  # None: Secure whenever the request arrived over HTTPS
    min_password_length: int = Field(10, ge=8)
    min_password_score: int = Field(3, ge=0, le=4)  # zxcvbn score a new password must reach
    # Login throttling (security.py): per user *and* client, exponential backoff.
    login_window_s: int = Field(300, gt=0)
    login_max_per_ip: int = Field(20, gt=0)  # failures per client address per window
    login_max_per_user: int = Field(50, gt=0)  # failures on one username: "under attack"
    login_free_failures: int = Field(3, ge=0)  # failures a client may make before backoff
    login_backoff_max_s: int = Field(900, gt=0)

    # Batch queue (jobs.py): any number of workers share it through the database.
    batch_worker: bool = True  # run a worker thread inside each web process
    worker_poll_s: float = Field(1.0, gt=0)
    lease_s: float = Field(300.0, gt=0)  # a claim older than this is taken over
    max_attempts: int = Field(3, ge=1)  # claims before an item that kills workers is failed
    orphan_grace_s: float = Field(600.0, ge=0)  # never delete unreferenced files younger

    # Throughput (microbatch.py, pixelbudget.py, heatmaps.py). Concurrent single-image
    # predictions of one model share a forward pass of up to batch_max images, the worker
    # lingering at most batch_wait_ms for more (batch_max 1: no batching). Decodes hold their
    # pixel count from a budget of decode_budget_pixels (None: 1.2 x max_pixels) and queue while
    # it is full, waiting at most decode_wait_s. Heatmaps run on heatmap_workers threads and
    # the last heatmap_cache_entries stay in memory (every one is also kept as a file).
    batch_max: int = Field(8, ge=1)
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    decode_budget_pixels: int | None = Field(None, gt=0)
    decode_wait_s: float = Field(300.0, gt=0)
    heatmap_workers: int = Field(1, ge=1)
    heatmap_cache_entries: int = Field(64, ge=0)

    # Results.
    default_method: str = "gradcam++"
    borderline_margin: float = Field(0.05, ge=0, le=0.5)
    device: str = "cpu"
    warm_models: bool = True  # one blank prediction per model before the server listens
    warm_explanations: bool = True  # import the CAM library in the background at start-up

    # Optional LLM rewrite of the plain-language summary (off unless llm_url is set).
    llm_url: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1
    llm_model: str = "local-model"
    llm_api_key_env: str = "MEDLENS_LLM_API_KEY"  # name of the variable holding the key
    llm_timeout_s: float = Field(20.0, gt=0)

    @field_validator("bundles")
    @classmethod
    def _bundles_exist(cls, v: list[Path]) -> list[Path]:
        return [Path(p) for p in v]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * MB)

    @property
    def pixel_budget(self) -> int:
        """Pixels all concurrent decodes may hold together (see ``decode_budget_pixels``)."""
        if self.decode_budget_pixels is not None:
            return int(self.decode_budget_pixels)
        return int(self.max_pixels * 1.2)

    def resolved_database_url(self) -> str:
        """The URL given, else ``$DATABASE_URL``, else ``sqlite:///<workspace>/medlens.db``."""
        if self.database_url:
            return self.database_url
        env = os.environ.get("DATABASE_URL")
        if env:
            return env
        return f"sqlite:///{(self.workspace / 'medlens.db').resolve()}"
