"""One typed settings object, read once at start and passed down.

Values come from (highest first) CLI flags, ``STREAMINFER_*`` environment variables, and the
defaults below. ``KAFKA_BOOTSTRAP`` and ``REDIS_URL`` are honoured too, because that is what the
dev-services script and most deployments already export. A bad value fails at start with the
field's name, never later inside a worker.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streaminfer.errors import ConfigError

#: ``--app NAME`` for the apps that ship with streaminfer (written with the public API).
BUILT_IN = {
    "classifier": "streaminfer.streams.apps.classifier:app",
    "recommender": "streaminfer.streams.apps.recommender:app",
}

WireFormat = Literal["auto", "single-object", "confluent", "json"]

__all__ = ["BUILT_IN", "Settings", "WireFormat", "load_settings"]




class Settings(BaseSettings):
    """Everything a streaminfer process needs to know about its environment."""

    model_config = SettingsConfigDict(env_prefix="STREAMINFER_", extra="forbid", frozen=True)

    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    redis_url: str = "redis://127.0.0.1:6379/0"  # redis+cluster://h:p,h:p for a Redis Cluster
    redis_cluster: bool = Field(
        False, description="redis_url names a Redis Cluster node: the same as writing it "
        "redis+cluster://")
    redis_wait_replicas: int | None = Field(
        None, ge=0, le=16,
        description="Redis Cluster: replicas that must hold a prediction batch before its "
        "offsets are committed (WAIT), so a failover cannot lose it; default 1 on a cluster. "
        "A master left without replicas is written to anyway (counted as degraded)")
    schema_registry_url: str | None = None
    wire_format: WireFormat = "auto"
    kafka_properties: dict[str, str] = Field(default_factory=dict)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client of streaminfer (confluent-kafka's and "
        "Faust's) reaches the brokers; SASL_SSL in production")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism of kafka_sasl_username")
    kafka_sasl_username: str | None = Field(None, description="SASL user (the ACL principal "
                                            "User:NAME)")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password; never logged, shown or stored (masked as ***)")
    kafka_ssl_ca_location: str | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates; default: "
        "the system's trust store")

    app: str = Field("classifier", min_length=1)  # a built-in name or "package.module:attr"
    events_topic: str = "events"
    feedback_topic: str = "feedback"
    ratings_topic: str = "ratings"
    predictions_topic: str = "predictions"
    dlq_suffix: str = ".dlq"
    consumer_group: str = "streaminfer"

    batch_max_records: int = Field(1000, gt=0, le=100_000)
    batch_max_wait_ms: float = Field(10.0, ge=0, le=60_000)
    batch_max_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_record_bytes: int = Field(
        1024 * 1024, gt=0, description="An input record's value over this many bytes goes to "
        "the dead-letter topic undecoded")
    latency_target_ms: float = Field(100.0, gt=0)

    device: str = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    num_features: int = Field(8, gt=0, le=65_536)
    seed: int = 0
    redis_ttl_s: int = Field(0, ge=0)
    top_n: int = Field(10, ge=0)  # the recommender's items per user in recs:{user}

    learn: bool = True
    optimizer: Literal["sgd", "adagrad", "adam"] | None = None
    lr: float | None = Field(None, gt=0)
    l2: float | None = Field(None, ge=0)
    hidden: int = Field(0, ge=0)
    learn_batch_size: int | None = Field(None, gt=0)  # None: the app's own (Learning)
    learn_max_steps: int | None = Field(None, ge=0)  # None: the app's own; 0: no bound
    learn_one_step_labels: int | None = Field(None, ge=0)  # None: the app's own; 0: off
    join_window_s: float = Field(
        600.0, gt=0, description="Labels join events up to this many seconds apart (event "
        "time); older events and waiting labels are dropped")
    join_max_entries: int = Field(
        250_000, gt=0, description="At most this many events and waiting labels held for "
        "the feedback join per worker; the oldest are evicted (counted as 'evicted'). The "
        "join's memory bound: an event takes about 220 bytes + 8 per feature, a waiting "
        "label about 600 (at most ~150 MB at the default)")

    sync_mode: Literal["off", "async", "sync"] = Field(
        "async", description="Parameter sync between the workers of a group (docs/sync.md): "
        "async by default, so workers that share a topic's partitions serve one model")
    sync_every_updates: int = Field(50, gt=0)
    sync_every_ms: float = Field(200.0, gt=0)
    sync_round_timeout_ms: float = Field(2000.0, gt=0)
    sync_shards: int = Field(4, gt=0)

    checkpoint_url: str | None = None
    max_model_bytes: int = Field(
        4 * 1024**3, gt=0, description="Weights (a checkpoint, registry version or --model "
        "file) larger than this are refused before they are read")
    checkpoint_every_s: float = Field(30.0, gt=0)
    checkpoint_keep: int = Field(5, gt=0)
    publish_params_every_s: float = Field(30.0, ge=0)
    tensorboard_dir: str | None = None

    registry_url: str | None = Field(
        None, description="Model registry: a directory, file:///dir, redis://... or "
        "s3://bucket/prefix; workers serve its 'active' version and follow its moves")
    registry_s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint of an s3:// registry (MinIO, Ceph...); "
        "default: AWS_ENDPOINT_URL or AWS itself")
    registry_poll_s: float = Field(1.0, gt=0, description="How often workers read the labels")
    canary_share: float = Field(
        0.05, ge=0, le=1, description="Share of keys a 'canary' version serves when the "
        "registry has that label: a stable hash of the key picks them, so a key always sees "
        "one version")
    auto_guard: bool = Field(
        False, description="Act on the per-version metrics: promote a shadow or canary that "
        "beats the active version by auto_guard_margin over auto_guard_min_labels labels, "
        "drop a canary whose error or NaN rate passes auto_guard_max_error_rate")
    auto_guard_min_labels: int = Field(
        2000, gt=0, description="Labels both versions must have been scored on before the "
        "guard compares them")
    auto_guard_margin: float = Field(
        0.01, ge=0, description="How much better the candidate's primary metric must be "
        "(AUC up, RMSE down, accuracy up; in the metric's own units)")
    auto_guard_max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Share of a canary's rows that failed or were not "
        "finite (over at least 100 rows) above which the guard removes the canary label")
    quantize: Literal["off", "int8"] = Field(
        "off", description="int8: serve a dynamically quantized copy of the model's Linear "
        "layers on CPU; learning continues on the fp32 master")
    quantize_refresh_s: float = Field(
        1.0, ge=0, description="Rebuild the int8 copy at most this often, after learning "
        "steps changed the master")

    metrics_port: int = Field(
        9464, ge=-1, le=65_535,
        description="HTTP port of /metrics (Prometheus), /healthz and /readyz; 0 picks a free "
                    "port (logged), -1 turns the server off (an env var cannot say None)")
    topic_replication_factor: int = Field(
        1, ge=1, le=32,
        description="Replication factor of every topic streaminfer creates (1 for a one-node "
                    "dev broker; 3 in production)")
    topic_min_insync_replicas: int = Field(
        1, ge=1, le=32,
        description="min.insync.replicas of every topic streaminfer creates (2 with "
                    "replication 3: an acks=all write survives one broker loss)")
    processing_guarantee: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once", description="exactly-once: each batch's prediction records and its "
        "input offsets are one Kafka transaction per input partition (readers use "
        "isolation.level=read_committed); Redis is idempotent either way")
    model_timeout_s: float = Field(
        30.0, ge=0,
        description="A batch's forward pass that takes longer is abandoned (it keeps running on "
                    "its thread) and the batch served by fallbacks; 0: no timeout")
    breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of bad batches (raised, timed out, slow) in the "
                                     "window that opens the model's circuit breaker")
    breaker_window: int = Field(20, ge=1, le=10_000,
                                description="Batches the breaker's failure rate is taken over")
    breaker_min_calls: int = Field(5, ge=1, description="Batches in the window before the "
                                   "breaker may open")
    breaker_open_s: float = Field(10.0, ge=0, description="How long the breaker stays open "
                                  "before one trial batch")
    breaker_slow_call_s: float = Field(0.0, ge=0, description="A forward pass longer than this "
                                       "counts as bad; 0: never")
    fallback_defaults: dict[str, float] = Field(
        default_factory=dict, description="Per output, the score a row gets when the model "
        "cannot serve and neither the previous version nor a stored prediction can (0.0)")
    log_format: Literal["text", "json"] = "text"  # json: one object per line (streams/logs.py)
    stall_after_s: float = Field(
        30.0, gt=0,
        description="/healthz fails when a lane with work (lag, or records in flight) made no "
                    "progress for this long; a lane retrying a sink write does not count")

    @field_validator("app")
    @classmethod
    def _app_spec(cls, value: str) -> str:
        if value not in BUILT_IN and ":" not in value:
            raise ValueError(f"must be a built-in app ({', '.join(sorted(BUILT_IN))}) or "
                             "'package.module:attribute'")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+cluster://",
                                 "rediss+cluster://")):
            raise ValueError("must start with redis://, rediss://, unix://, redis+cluster:// "
                             "or rediss+cluster://")
        return value

    @model_validator(mode="before")
    @classmethod
    def _cluster_flag(cls, data: Any) -> Any:
        """``redis_cluster=True`` turns ``redis://`` into ``redis+cluster://`` (the one form
        the rest of the code reads)."""
        if isinstance(data, dict) and str(data.get("redis_cluster", "")).lower() in (
                "true", "1", "yes"):
            url = str(data.get("redis_url") or cls.model_fields["redis_url"].default)
            for plain in ("redis", "rediss"):
                if url.startswith(f"{plain}://"):
                    url = f"{plain}+cluster://" + url[len(plain) + 3:]
            if url.startswith("unix://"):
                raise ValueError("redis_cluster: a Redis Cluster is not reached over unix://")
            data = {**data, "redis_url": url}
        return data

    @field_validator("kafka_properties")
    @classmethod
    def _no_owned_properties(cls, value: dict[str, str]) -> dict[str, str]:
        owned = {"bootstrap.servers", "group.id", "enable.auto.commit"}
        clash = owned & set(value)
        if clash:
            raise ValueError(f"{sorted(clash)} are set by streaminfer itself; use its own options")
        return value

    @model_validator(mode="after")
    def _sasl_needs_a_user(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
                self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"kafka_security_protocol={self.kafka_security_protocol} needs "
                             "kafka_sasl_username and kafka_sasl_password")
        return self

    @model_validator(mode="after")
    def _registry_for_confluent(self) -> Settings:
        if self.wire_format == "confluent" and not self.schema_registry_url:
            raise ValueError("wire_format=confluent needs schema_registry_url")
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                f"topic_min_insync_replicas ({self.topic_min_insync_replicas}) exceeds "
                f"topic_replication_factor ({self.topic_replication_factor}): no acks=all "
                "write could ever succeed")
        return self

    @model_validator(mode="after")
    def _breaker_window(self) -> Settings:
        if self.breaker_min_calls > self.breaker_window:
            raise ValueError(f"breaker_min_calls ({self.breaker_min_calls}) exceeds "
                             f"breaker_window ({self.breaker_window}): the breaker could "
                             "never open")
        return self

    def topic_policy(self) -> dict[str, int]:
        """``ensure_topics`` keyword arguments: replication and ``min.insync.replicas``."""
        return {"replication": self.topic_replication_factor,
                "min_insync_replicas": self.topic_min_insync_replicas}

    @property
    def effective_wire_format(self) -> Literal["single-object", "confluent", "json"]:
        """``auto`` means Schema Registry framing when a registry is configured."""
        if self.wire_format != "auto":
            return self.wire_format
        return "confluent" if self.schema_registry_url else "single-object"

    def dlq_topic(self, topic: str) -> str:
        return f"{topic}{self.dlq_suffix}"

    def kafka_security(self) -> dict[str, str]:
        """The librdkafka properties of the ``kafka_security_protocol`` / ``kafka_sasl_*`` /
        ``kafka_ssl_*`` settings (``-X`` properties given as well win over them)."""
        out = {"security.protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            assert self.kafka_sasl_username and self.kafka_sasl_password  # the validator's
            out.update({"sasl.mechanism": self.kafka_sasl_mechanism,
                        "sasl.username": self.kafka_sasl_username,
                        "sasl.password": self.kafka_sasl_password.get_secret_value()})
        if self.kafka_ssl_ca_location:
            out["ssl.ca.location"] = self.kafka_ssl_ca_location
        return out

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """confluent-kafka client config: bootstrap + security + passthrough properties +
        ``extra``."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_security(),
                **self.kafka_properties, **extra}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env + ``overrides`` (CLI flags; ``None`` means not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for field, fallback in (("bootstrap_servers", "KAFKA_BOOTSTRAP"), ("redis_url", "REDIS_URL")):
        own = f"STREAMINFER_{field.upper()}"
        if field not in given and own not in os.environ and os.environ.get(fallback):
            given[field] = os.environ[fallback]
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
