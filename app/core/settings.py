"""All configuration, read once from the environment (prefix ``FLUXGATE_``).

A wrong or missing setting stops start-up with one clear line (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CF_BASE_URL = "https://api.cloudflare.com/client/v4"
# filesystem:///path/to/dir is kombu's filesystem transport: the embedded default's broker.
BROKER_SCHEMES = ("redis://", "rediss://", "filesystem://")
# Docker's and Kubernetes' place for secrets: a file named after a setting (lower or upper case,
# e.g. fluxgate_cf_api_token) gives its value. The environment wins over a file.
DEFAULT_SECRETS_DIR = "/run/secrets"


class ConfigError(Exception):
    """Configuration that cannot work; the message is one line for the operator."""


def normalize_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``postgres://`` URLs and drive them with psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def with_password(url: str, password: str) -> str:
    """``url`` (a user, no password) with ``password`` put in, quoted for a URL."""
    from sqlalchemy.engine import make_url

    if not url.startswith("postgresql"):
        raise ValueError("FLUXGATE_DATABASE_PASSWORD is for a postgresql:// DATABASE_URL")
    parsed = make_url(url)
    if parsed.password is not None:
        raise ValueError(
            "FLUXGATE_DATABASE_URL has a password and FLUXGATE_DATABASE_PASSWORD is set: "
            "give it in one place"
        )
    if not parsed.username:
        raise ValueError("FLUXGATE_DATABASE_PASSWORD needs a user in FLUXGATE_DATABASE_URL")
    return parsed.set(password=password).render_as_string(hide_password=False)


def secrets_dir() -> str | None:
    """Where settings are read from files (Docker and Kubernetes secrets):
    ``FLUXGATE_SECRETS_DIR``, else /run/secrets when it exists, else nowhere."""
    chosen = os.environ.get("FLUXGATE_SECRETS_DIR", "").strip()
    if chosen:
        if not Path(chosen).is_dir():
            raise ConfigError(f"FLUXGATE_SECRETS_DIR: {chosen} is not a directory")
        return chosen
    return DEFAULT_SECRETS_DIR if Path(DEFAULT_SECRETS_DIR).is_dir() else None


PositiveSeconds = Annotated[float, Field(gt=0)]

# Settings that mean something when set to nothing: no extra webhook networks; OpenTelemetry's
# own variables, which its SDKs read as unset when empty. Every other empty value is a mistake
# (an environment file copied before it was filled in) and stops start-up.
MAY_BE_EMPTY = frozenset(
    {"webhook_allowed_networks", "otel_exporter_otlp_endpoint", "otel_service_name"}
)


Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """Parse the operator's comma-separated allow-list of CIDRs ("" allows nothing).

    A plain address counts as /32 or /128. A CIDR with host bits set (10.0.0.1/8) is refused
    rather than silently widened: it usually means a typo, and guessing would open a network
    the operator did not mean to open. Empty entries (a trailing comma) are skipped.
    """
    networks: list[Network] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError:
            try:
                widened = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
                ) from None
            raise ValueError(
                f"{entry!r} has host bits set; write the network address, e.g. {widened}"
            ) from None
    return tuple(networks)


def parse_schedule(value: str) -> tuple[float, ...]:
    """``"0,5,300"``: seconds before each attempt; at least one, none negative."""
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise ValueError("must be comma-separated seconds, e.g. 0,5,300") from None
    if any(delay < 0 or delay != delay for delay in delays):
        raise ValueError("delays cannot be negative")
    return delays


def usable_cores() -> int:
    """The cores this process may run on (the machine's where that cannot be asked)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXGATE_", extra="ignore")
    # Every role that sends or takes tasks needs the broker; see DatabaseSettings.
    broker_required: ClassVar[bool] = True

    database_url: str
    # Merged into a DATABASE_URL that has a user but no password: the URL can then live in a
    # config file, the password in a secret (FLUXGATE_DATABASE_PASSWORD, or its file).
    database_password: SecretStr | None = None
    redis_url: str | None = None
    broker_url: str | None = None

    cf_account_id: str | None = None
    cf_api_token: str | None = None
    cf_base_url: str = DEFAULT_CF_BASE_URL

    # Request limits.
    prompt_max_chars: int = Field(default=4096, ge=1)
    # A whole request, enforced while it streams in: four 10 MB images in base64 fit.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    input_image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    input_image_max_pixels: int = Field(default=40_000_000, ge=256 * 256)
    # Inputs are downscaled to fit INPUT_MAX_SIDE x INPUT_MAX_SIDE before forwarding.
    input_max_side: int = Field(default=512, ge=64, le=4096)
    # Memory one API process spends decoding input images at once (4 bytes a pixel; WebP 16
    # while it decodes); further uploads wait for their share.
    input_decode_memory_bytes: int = Field(default=768 * 1024 * 1024, ge=32 * 1024 * 1024)
    # The request head (request line and headers): its bytes, its headers, the time to send it.
    max_header_bytes: int = Field(default=32 * 1024, ge=4 * 1024, le=1024 * 1024)
    max_headers: int = Field(default=100, ge=16, le=10_000)
    request_header_timeout_seconds: PositiveSeconds = 10.0
    # The whole body must arrive within this long after the head, however it trickles.
    request_body_timeout_seconds: PositiveSeconds = 60.0

    # OpenAI-compatible endpoints: how long they wait for the jobs, how long url links live.
    openai_wait_seconds: PositiveSeconds = 300.0
    image_url_ttl_seconds: int = Field(default=3600, ge=60)
    # The gateway's external URL for absolute links (default: the URL the request came to).
    public_url: str | None = None

    # Upstream calls. Workers AI allows 720 requests a minute per account by default.
    upstream_rpm: int = Field(default=720, ge=1, le=1_000_000)
    upstream_connect_timeout_seconds: PositiveSeconds = 10.0
    upstream_timeout_seconds: PositiveSeconds = 120.0
    upstream_max_attempts: int = Field(default=5, ge=1, le=50)
    retry_base_seconds: PositiveSeconds = 2.0
    retry_max_seconds: PositiveSeconds = 120.0

    # Worker and sweeper.
    worker_concurrency: int = Field(default=64, ge=1, le=1024)
    job_lease_seconds: PositiveSeconds = 300.0
    sweep_interval_seconds: PositiveSeconds = 30.0
    # How often beat rolls closed hours of the ledger up for the usage reports.
    usage_rollup_interval_seconds: PositiveSeconds = 60.0
    requeue_after_seconds: PositiveSeconds = 300.0
    # Stored images (outputs and inputs) are deleted this many days after their job completed;
    # 0 keeps them. Jobs, charges and usage are kept either way.
    image_retention_days: int = Field(default=30, ge=0, le=100_000)
    # How often beat deletes what is past its use: expired images, links, idempotency keys,
    # webhook answer excerpts, ended dashboard sessions.
    retention_interval_seconds: PositiveSeconds = 3600.0
    # Jobs (or rows) per transaction of that clean-up: short transactions, never a long lock.
    retention_batch_size: int = Field(default=200, ge=1, le=10_000)
    # Per process. Keep processes x (pool + overflow) below PostgreSQL's max_connections.
    db_pool_size: int = Field(default=15, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)

    # Webhooks. Receivers outside these CIDRs must have public addresses (SSRF safety).
    webhook_allowed_networks: str = ""
    # Seconds before each delivery attempt, counted from the previous one (the first is
    # immediate); every delay gets up to 10% jitter. Tests shorten it.
    webhook_retry_schedule: str = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    webhook_timeout_seconds: PositiveSeconds = 15.0
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    # After a rotation, deliveries are signed with the old secret too for this long.
    webhook_secret_grace_seconds: int = Field(default=24 * 3600, ge=0)

    # Server-Sent Events: a comment line this often keeps proxies from closing a quiet stream
    # (and finds clients that went away).
    events_keepalive_seconds: PositiveSeconds = 15.0
    # Waiting requests are woken by notifications; this often, one query re-checks every
    # watched job in case a notification was lost.
    events_reconcile_seconds: PositiveSeconds = 10.0

    # The admin dashboard's sessions: ended after this long without a request, and this long
    # after login whatever happens; failed logins from one client address, per window.
    admin_session_idle_seconds: int = Field(default=30 * 60, ge=60)
    admin_session_max_seconds: int = Field(default=12 * 3600, ge=60)
    admin_login_max_failures: int = Field(default=10, ge=1, le=10_000)
    admin_login_window_seconds: int = Field(default=15 * 60, ge=1)

    log_level: str = "INFO"
    # "json": one JSON object a line (the Docker image's default); "text" for people.
    log_format: Literal["text", "json"] = "text"

    # uvicorn processes of `fluxgate api` (--workers): one per core this process may run on,
    # since one process is bound by one core (the GIL) long before PostgreSQL is; at most 8
    # unless set, as each keeps a pool of database connections of its own.
    api_workers: int = Field(default_factory=lambda: min(usable_cores(), 8), ge=1, le=256)

    # The API's metrics on a port of their own (its /metrics then moves there), so they can
    # stay on the internal network while the API is published.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # prometheus_client's multiprocess directory: `fluxgate api` makes one for its processes
    # (share_with_api_processes), so /metrics counts all of them together.
    prometheus_multiproc_dir: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"),
    )

    # Tracing, off unless a collector's OTLP/HTTP endpoint is set (the ``otel`` extra). These
    # two are OpenTelemetry's own names, so they carry no FLUXGATE_ prefix.
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    otel_service_name: str = Field(default="fluxgate", validation_alias="OTEL_SERVICE_NAME")

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str) or value.strip() or info.field_name in MAY_BE_EMPTY:
            return value
        field = cls.model_fields[info.field_name or ""]
        if field.is_required():
            raise ValueError("is empty; it must be set")
        if field.default is None:
            raise ValueError("is set but empty; fill it in, or remove it to leave it unset")
        raise ValueError(
            f"is set but empty; fill it in, or remove it to use the default ({field.default})"
        )

    @field_validator("cf_account_id", "cf_api_token")
    @classmethod
    def _credential(cls, value: str | None) -> str | None:
        # Pasted with a trailing newline or space, a credential would fail upstream as a 401.
        return None if value is None else value.strip()

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = normalize_database_url(value.strip())
        if not value.startswith(("postgresql+psycopg://", "sqlite:///")):
            raise ValueError("must be a postgresql:// or sqlite:/// URL")
        return value

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value.startswith(BROKER_SCHEMES):
            raise ValueError("must be a redis://, rediss:// or filesystem:/// URL")
        return value

    @field_validator("cf_base_url")
    @classmethod
    def _cf_base_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be the gateway's http(s) URL, e.g. https://fluxgate.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must be a plain URL, without ?query or #fragment")
        # Links are made by appending /v1/...: no trailing slash.
        return value.strip().rstrip("/")

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _webhook_allowed_networks(cls, value: str) -> str:
        parse_networks(value)  # raises ValueError with the bad entry
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _webhook_retry_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _otel_endpoint(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value:
            return None  # set but empty counts as unset, as in OpenTelemetry's own SDKs
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL, e.g. http://collector:4318")
        return value.rstrip("/")

    @field_validator("otel_service_name")
    @classmethod
    def _otel_service_name(cls, value: str) -> str:
        return value.strip() or "fluxgate"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _database_password_in_url(self) -> Self:
        if self.database_password is not None:
            self.database_url = with_password(
                self.database_url, self.database_password.get_secret_value()
            )
            self.database_password = None  # in the URL now; not kept twice
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.broker_required and self.broker_url is None and self.redis_url is None:
            raise ValueError("set FLUXGATE_BROKER_URL or FLUXGATE_REDIS_URL")
        if (self.cf_account_id is None) != (self.cf_api_token is None):
            raise ValueError(
                "set both FLUXGATE_CF_ACCOUNT_ID and FLUXGATE_CF_API_TOKEN, or neither"
            )
        # A lease shorter than one upstream call would hand a live job to a second worker.
        if (
            self.job_lease_seconds
            <= self.upstream_timeout_seconds + self.upstream_connect_timeout_seconds
        ):
            raise ValueError(
                "FLUXGATE_JOB_LEASE_SECONDS must exceed FLUXGATE_UPSTREAM_TIMEOUT_SECONDS "
                "+ FLUXGATE_UPSTREAM_CONNECT_TIMEOUT_SECONDS"
            )
        # The largest image allowed must fit alone (a WebP: 16 bytes a pixel, + working space).
        if self.input_decode_memory_bytes < 16 * self.input_image_max_pixels + 32 * 1024 * 1024:
            raise ValueError(
                "FLUXGATE_INPUT_DECODE_MEMORY_BYTES must be at least 16 x "
                "FLUXGATE_INPUT_IMAGE_MAX_PIXELS + 32 MiB, or an image at the limit could not "
                "be decoded"
            )
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("FLUXGATE_RETRY_MAX_SECONDS must be >= FLUXGATE_RETRY_BASE_SECONDS")
        return self

    @property
    def effective_broker_url(self) -> str:
        url = self.broker_url or self.redis_url
        assert url is not None  # guaranteed by _consistent
        return url

    @property
    def broker_folder(self) -> str | None:
        """The directory of a ``filesystem://`` broker, else ``None``."""
        url = self.effective_broker_url
        return url.removeprefix("filesystem://") if url.startswith("filesystem://") else None

    @property
    def webhook_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.webhook_allowed_networks)

    @property
    def webhook_delays(self) -> tuple[float, ...]:
        return parse_schedule(self.webhook_retry_schedule)

    def require_upstream(self) -> tuple[str, str]:
        """The Cloudflare credentials; workers cannot run without them."""
        if self.cf_account_id is None or self.cf_api_token is None:
            raise ConfigError(
                "FLUXGATE_CF_ACCOUNT_ID and FLUXGATE_CF_API_TOKEN are required to run a worker"
            )
        return self.cf_account_id, self.cf_api_token


class DatabaseSettings(Settings):
    """The settings of the commands that use the database alone (keys, prices, usage, jobs,
    migrate): they send no task, so they ask for no broker."""

    broker_required: ClassVar[bool] = False


class SimulatorSettings(BaseSettings):
    """What the upstream simulator takes from the environment: the token a gateway beside it
    sends (docker-compose.yml's simulator shares the gateway's environment file), and whether
    it draws each picture once (``simulate-upstream --cache``; off by default)."""

    model_config = SettingsConfigDict(env_prefix="FLUXGATE_", extra="ignore")

    cf_api_token: str = "simulator-token"  # noqa: S105  # the simulator's, not a secret
    simulator_cache: bool = False


def simulator_settings() -> SimulatorSettings:
    """The simulator's settings; the token is the gateway's own (its variable or its secret's
    file). Raise :class:`ConfigError` with one line if one is wrong."""
    try:
        folder = secrets_dir()
    except ConfigError:
        folder = None  # the gateway's processes say what is wrong with it
    try:
        return SimulatorSettings(_secrets_dir=folder)
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None


def _one_line(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        # A field read under its own name (OTEL_...) is reported by that name.
        name = field if field.isupper() else f"FLUXGATE_{field.upper()}" if field else "settings"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {message}" if field else message)
    return "invalid configuration: " + "; ".join(parts)


def load_settings(**given: Any) -> Settings:
    """Read and check the settings (``given`` ones over the environment's); raise
    :class:`ConfigError` with one line if they are wrong."""
    return _load(Settings, given)


def load_database_settings(**given: Any) -> Settings:
    """:func:`load_settings` for the commands that use the database alone: no broker needed."""
    return _load(DatabaseSettings, given)


def _load(kind: type[Settings], given: dict[str, Any]) -> Settings:
    try:
        # The rest from the environment, then from the secrets' files.
        return kind(**given, _secrets_dir=secrets_dir())
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None


def database_url_in_environment() -> bool:
    """Whether the environment, or a secret's file, names a database: the command line then
    uses it rather than the data dir of a ``fluxgate dev`` in the current folder."""
    if os.environ.get("FLUXGATE_DATABASE_URL", "").strip():
        return True
    folder = secrets_dir()
    # Secrets' files are matched by name in any case, as pydantic-settings reads them.
    return folder is not None and any(
        path.name.lower() == "fluxgate_database_url" for path in Path(folder).iterdir()
    )


def share_with_api_processes(settings: Settings) -> None:
    """Give uvicorn's worker processes (which read their settings from the environment) what
    ``fluxgate api`` chose for its metrics: prometheus_client's multiprocess directory (the
    library reads it from the environment as metrics are made, so this must happen before
    anything imports them) and the metrics port, if the command line set one."""
    if settings.prometheus_multiproc_dir is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = settings.prometheus_multiproc_dir
    if settings.metrics_port is not None:
        os.environ["FLUXGATE_METRICS_PORT"] = str(settings.metrics_port)


def child_environment(
    settings: Mapping[str, str | None], *, other: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a child process: this one's, with ``settings`` (by field name, e.g.
    ``database_url``) set, or removed where ``None``, and ``other`` variables set."""
    env = {**os.environ, **(other or {})}
    for name, value in settings.items():
        variable = f"FLUXGATE_{name.upper()}"
        if value is None:
            env.pop(variable, None)
        else:
            env[variable] = value
    return env


_current: Settings | None = None


def get_settings() -> Settings:
    """This process's settings: read from the environment on first use, unless its edge chose
    them first (:func:`use_settings`)."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use_settings(settings: Settings, **changes: Any) -> Settings:
    """Make ``settings``, with ``changes`` checked as the environment's would be, this
    process's settings (a command-line flag over the environment, ``fluxgate dev``'s own)."""
    global _current
    try:
        # By alias: the fields read under their own names (OTEL_...) are given back by them.
        _current = type(settings).model_validate({**settings.model_dump(by_alias=True), **changes})
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
    return _current
