"""The one validated configuration file.

Every option has a default, so an empty file (or none) is a valid config. Unknown keys are
errors (``extra="forbid"``) and every error names its dotted key path. Detector settings are a
discriminated union on ``detector.type``, so each detector validates only its own options.

The file is TOML. Secrets never live in it: the MQTT password comes from an environment
variable or a file, and is held as a ``SecretStr`` so it cannot leak into logs or dumps.

(Over 400 lines, knowingly: one schema, every option with its description, in one place.)
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_METRICS_PORT = 19847
"""Outside 9100-10100, where Prometheus's default-port allocations put the exporters (9847,
the first choice, turned out to be StayRTR's), and below the ephemeral range."""


class ConfigError(Exception):
    """A config problem the user must fix. ``lines`` holds one message per bad key."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Strict):
    """TLS to the broker. Enabled by an ``mqtts://`` broker URL or ``enabled = true``."""

    enabled: bool = False
    ca_file: Path | None = Field(None, description="CA bundle; the system store when unset.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")
    check_hostname: bool = Field(True, description="Verify the broker's name in its cert.")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self


class MQTTConfig(_Strict):
    """Connection to the plant broker."""

    broker: str = Field("mqtt://localhost:1883", description="mqtt://HOST:PORT or mqtts://")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version; 3.1.1 for brokers without v5 (e.g. amqtt)."
    )
    client_id: str = Field("streamwatch", min_length=1, max_length=128)
    topics: list[str] = Field(["sensors/#"], min_length=1, description="Filters to subscribe.")
    qos: Literal[0, 1] = Field(1, description="Subscription QoS; 1 for no loss.")
    username: str | None = None
    password_env: str | None = Field(None, description="Name of an env var holding the password.")
    password_file: Path | None = Field(None, description="File holding the password.")
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(
        86400, ge=0, description="MQTT 5 session expiry; >0 keeps queued readings across restarts."
    )
    receive_maximum: int = Field(
        1000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: unacknowledged QoS 1 messages the broker may send "
        "at once. Messages are acknowledged once scored, so this bounds what the daemon holds.",
    )
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    alert_prefix: str = Field("streamwatch/alerts", min_length=1)
    state_prefix: str = Field("streamwatch/state", min_length=1)
    status_topic: str = Field("streamwatch/status", min_length=1)
    commands: bool = Field(
        True, description="Take operator commands on <cmd_prefix>/<id> (and the live page's)."
    )
    cmd_prefix: str = Field("streamwatch/cmd", min_length=1)
    tls: TLSConfig = TLSConfig()

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v

    @field_validator("topics")
    @classmethod
    def _topic_filters(cls, v: list[str]) -> list[str]:
        for f in v:
            levels = f.split("/")
            bad = any(("#" in lv and lv != "#") or ("+" in lv and lv != "+") for lv in levels)
            if not f or bad:
                raise ValueError(f"invalid topic filter {f!r}")
            if "#" in levels[:-1]:
                raise ValueError(f"'#' must be the last level in {f!r}")
        return v

    @model_validator(mode="after")
    def _one_password_source(self) -> MQTTConfig:
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    @property
    def host(self) -> str:
        """Broker host name from the URL."""
        return urlsplit(self.broker).hostname or "localhost"

    @property
    def port(self) -> int:
        """Broker port from the URL (1883, or 8883 for mqtts)."""
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def use_tls(self) -> bool:
        """TLS is on for ``mqtts://`` or ``tls.enabled``."""
        return self.tls.enabled or urlsplit(self.broker).scheme == "mqtts"

    def password(self) -> SecretStr | None:
        """Resolve the password from its env var or file; a clear error if it is missing."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError([f"mqtt.password_env: {self.password_env} is not set"])
            return SecretStr(value)
        if self.password_file:
            try:
                return SecretStr(self.password_file.read_text().strip())
            except OSError as exc:
                raise ConfigError([f"mqtt.password_file: cannot read: {exc.strerror}"]) from None
        return None


class PayloadConfig(_Strict):
    """How message payloads are decoded."""

    sensor_prefix: str = Field("sensors/", description="Removed from a topic to get a sensor id.")
    value_field: str = Field("value", min_length=1, description="JSON field holding the reading.")
    timestamp_field: str = Field("ts", min_length=1, description="JSON field holding the time.")
    max_bytes: int = Field(65536, ge=16, description="Larger payloads are rejected as oversize.")
    max_batch: int = Field(10000, ge=1, description="Most readings one JSON array may carry.")
    max_future_s: float = Field(
        300.0, ge=0, description="Timestamps further ahead of the clock are rejected."
    )
    max_age_s: float = Field(
        7 * 86400.0, gt=0, description="Timestamps older than this are rejected as stale."
    )


class SparkplugConfig(_Strict):
    """Sparkplug B ingest: edge nodes publishing ``spBv1.0`` births, data and deaths."""

    enabled: bool = Field(
        False, description="Also subscribe to spBv1.0/<group>/# (all groups: spBv1.0/#)."
    )
    group: str | None = Field(
        None, min_length=1, description="Only this Sparkplug group id; unset: every group."
    )
    rebirth_interval_s: float = Field(
        10.0, gt=0, description="Least time between two rebirth requests to one edge node."
    )

    @field_validator("group")
    @classmethod
    def _one_level(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "/+#"):
            raise ValueError("a Sparkplug group id is one topic level (no /, + or #)")
        return v

    @property
    def topic(self) -> str:
        """The topic filter to subscribe to."""
        return f"spBv1.0/{self.group}/#" if self.group else "spBv1.0/#"


class WindowConfig(_Strict):
    """Per-sensor sliding windows (window detectors only; reading detectors use length 1)."""

    length: int = Field(20, ge=2, le=4096, description="Readings per window (W).")
    stride: int = Field(1, ge=1, description="New readings between scored windows (S).")
    max_gap_s: float = Field(
        300.0, gt=0, description="A longer gap between readings restarts the window."
    )
    max_sensors: int = Field(10000, ge=1, description="Cap on tracked sensors.")
    idle_evict_s: float = Field(
        3600.0, gt=0, description="Sensors silent this long are evicted first."
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> WindowConfig:
        if self.stride > self.length:
            raise ValueError("stride must be <= length")
        return self


class ThresholdConfig(_Strict):
    """Calibration of the score threshold from the scores of normal data."""

    false_alarm_rate: float = Field(
        1e-5,
        gt=0,
        lt=0.5,
        description="Likelihood scores (gaussian, gmm, lstm-vae): target fraction of normal "
        "scores above the threshold, per sensor.",
    )
    margin: float = Field(
        1.5,
        ge=1.0,
        description="Ratio scores (robust): the threshold is this many times the largest "
        "normal score.",
    )


class AlertConfig(_Strict):
    """Per-sensor alert state machine."""

    raise_k: int = Field(1, ge=1, description="Raise after k anomalous verdicts ...")
    raise_n: int = Field(1, ge=1, description="... out of the last n.")
    clear_m: int = Field(30, ge=1, description="Clear after m consecutive normal verdicts ...")
    clear_hold_s: float = Field(
        30.0, ge=0, description="... and this long since the last anomalous one (off-delay)."
    )
    refractory: int = Field(
        60,
        ge=0,
        description="No new raise within this many verdicts (readings) of the last raise.",
    )
    confirm_s: float = Field(
        10.0,
        ge=0,
        description="Window detectors: a sensor whose normal interval lets 2 more readings "
        "come within this many seconds raises only on 2 anomalous verdicts of its last 3 (a "
        "dropout still raises alone); slower sensors, and per-reading detectors, raise on "
        "raise_k of raise_n. 0 turns it off.",
    )

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertConfig:
        if self.raise_k > self.raise_n:
            raise ValueError("raise_k must be <= raise_n")
        return self


_MOVED_TO_LEARNING = ("warmup", "auto_train", "auto_train_readings")


class _DetectorBase(_Strict):
    """A model's hyper-parameters: what shapes a trained model, saved and hashed in its
    bundle. How the daemon learns and when (warm-up, auto-training) is runtime policy, in
    :class:`LearningConfig`."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [k for k in _MOVED_TO_LEARNING if k in data]
            if moved:
                raise ValueError(
                    f"{', '.join(moved)} moved to the [learning] section "
                    f"(learning.{moved[0]}); it is runtime policy, not a model setting"
                )
        return data


class GaussianConfig(_DetectorBase):
    """Per-reading negative log-probability under a per-sensor Normal."""

    type: Literal["gaussian"] = "gaussian"


class GMMConfig(_DetectorBase):
    """Per-reading negative log-probability under a per-sensor Gaussian mixture."""

    type: Literal["gmm"] = "gmm"
    max_components: int = Field(5, ge=1, le=10, description="BIC chooses among 1..this.")
    steps: int = Field(300, ge=10, description="Optimiser steps per fit.")


class RobustConfig(_DetectorBase):
    """Robust per-sensor baseline; score = the worst of five deviation ratios (point, level,
    spread, jump, stuck) against the largest each took on normal data."""

    type: Literal["robust"] = "robust"
    span: int = Field(
        10, ge=3, le=1000, description="Readings in the level and spread parts (<= length - 1)."
    )
    min_scale: float = Field(
        8.0 / 3.0,
        gt=0,
        description="Least scale of the point, level and jump parts, in robust sigmas: with "
        "threshold.margin 1.5, nothing under 4 sigma alarms on a perfectly clean signal.",
    )
    min_scale_spread: float = Field(
        1.0 / 3.0,
        gt=0,
        description="Least scale of the spread part, |log(sd/sd0)|: with margin 1.5, a "
        "factor e^0.5 = 1.65 up or down.",
    )
    min_scale_stuck: float = Field(
        4.0,
        gt=0,
        description="Least scale of the stuck part, in repeated readings: with margin 1.5, "
        "a sensor that never repeated a value is stuck after 7 equal readings in a row.",
    )
    min_mean_spread: float = Field(
        0.3,
        gt=0,
        description="Least spread of window means, as a fraction of s/sqrt(span) (what "
        "independent readings would give).",
    )


class LSTMVAEConfig(_DetectorBase):
    """LSTM variational autoencoder over windows; score = reconstruction NLL."""

    type: Literal["lstm-vae"] = "lstm-vae"
    hidden: int = Field(32, ge=2, description="LSTM units.")
    latent: int = Field(8, ge=1, description="Latent dimensions.")
    epochs: int = Field(30, ge=1)
    min_steps: int = Field(
        1000, ge=0, description="Least optimiser steps (more epochs on small data)."
    )
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    patience: int = Field(4, ge=1, description="Early-stopping patience in epochs.")
    validation_split: float = Field(0.2, gt=0, lt=0.9)
    latent_samples: int = Field(1, ge=1, le=64, description="Samples averaged per score.")
    shared: bool = Field(True, description="One model for all sensors (per-sensor scaling).")
    seed: int = Field(0, description="Seeds weight initialisation, batch order and sampling.")


class MahalanobisConfig(_DetectorBase):
    """Multivariate baseline for groups: the Mahalanobis distance of a window's per-member
    means (each member standardised on normal data) from their normal mean, under their
    normal covariance (ridge-regularised). Score kind: a ratio, like robust's."""

    type: Literal["mahalanobis"] = "mahalanobis"
    span: int = Field(
        15, ge=1, le=4096, description="Trailing steps averaged per member (<= window length)."
    )
    point: bool = Field(
        False,
        description="Also score each window's last step alone (the point part): catches "
        "spikes; off by default (no better on SKAB experiments 0-7, one more false raise).",
    )
    ridge: float = Field(
        0.001,
        ge=0,
        description="Added to the covariance's diagonal, as a fraction of its mean variance.",
    )


class RVAEConfig(LSTMVAEConfig):
    """Recurrent (LSTM) VAE over a group's windows of time x members, each member standardised
    per group; ``shared``: one network per member count, shared by the groups that have it
    (else one per group). The LSTM-VAE's options, plus which score."""

    type: Literal["rvae"] = "rvae"  # type: ignore[assignment]
    score: Literal["elbo", "reconstruction", "latent"] = Field(
        "elbo",
        description="elbo: reconstruction NLL + KL; reconstruction: the NLL alone; latent: "
        "the KL alone (how far the encoder must move from the prior).",
    )


DetectorConfig = Annotated[
    GaussianConfig | GMMConfig | RobustConfig | LSTMVAEConfig | MahalanobisConfig | RVAEConfig,
    Field(discriminator="type"),
]
GroupDetectorConfig = Annotated[MahalanobisConfig | RVAEConfig, Field(discriminator="type")]


class GroupsConfig(_Strict):
    """Multivariate groups: sensors that one pattern puts together are scored together, as
    one machine, by a group detector over aligned windows of time x members."""

    patterns: list[str] = Field(
        [],
        description="Sensor-id patterns (+ one level, # the rest); the group id is the id up "
        "to the last + level, e.g. skab/+/# puts skab/valve1_3/Pressure in skab/valve1_3.",
    )
    period_s: float | None = Field(
        None, gt=0, description="Grid period of a group's steps; unset: inferred per group."
    )
    max_age_s: float | None = Field(
        None, gt=0, description="A member's held value older than this is missing (3 periods)."
    )
    missing: Literal["impute", "restart"] = Field(
        "impute",
        description="A step with a member missing: impute its normal mean (flagged), or "
        "restart the group's window.",
    )
    window: int = Field(20, ge=2, le=4096, description="Grid steps per group window.")
    score_members_alone: bool = Field(
        False, description="Also score each member alone, as a sensor in no group."
    )
    max_groups: int = Field(2000, ge=1, description="Cap on tracked groups.")
    max_members: int = Field(64, ge=1, description="Cap on members per group.")
    model_dir: Path | None = Field(
        None, description="Group model bundle; unset: <model_dir>.groups beside model_dir."
    )
    detector: GroupDetectorConfig = MahalanobisConfig()
    clear_ratio: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Hysteresis: a raised group alert counts a window as normal (toward "
        "alerts.clear_m) only when its score is at most clear_ratio x its threshold; 1: the "
        "threshold itself. 0.6 chosen on SKAB experiments 0-7 (0.5-0.8 alike).",
    )
    follow_half_life: int = Field(
        0,
        ge=0,
        description="Protected adaptation: a group's normal member means follow slow drift "
        "with this half-life in grid steps, learning only from windows judged normal, outside "
        "an alert and `follow_guard` steps clear of any anomalous verdict; 0 turns it off.",
    )
    follow_guard: int = Field(
        60, ge=0, description="Grid steps after an anomalous verdict before following resumes."
    )
    threshold: ThresholdConfig = Field(
        ThresholdConfig(margin=3.0),
        description="Group thresholds, by the one calibration policy (margin for ratio "
        "scores, false_alarm_rate for likelihoods); margin 3.0 chosen on SKAB experiments 0-7.",
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        from streamwatch.pipeline.groups import Pattern, PatternError

        for p in v:
            try:
                Pattern.parse(p)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _span_fits(self) -> GroupsConfig:
        span = getattr(self.detector, "span", 1)
        if span > self.window:
            raise ValueError("detector.span must be <= window")
        return self

    def bundle_dir(self, model_dir: Path | None) -> Path | None:
        """Where the group model is saved and loaded."""
        if self.model_dir is not None:
            return self.model_dir
        if model_dir is None:
            return None
        return model_dir.with_name(model_dir.name + ".groups")


class FaultRange(_Strict):
    """Physical limits of the sensors whose ids match ``pattern`` (MQTT-style: ``+`` one
    level, ``#`` the rest), e.g. ``plant/+/temp``."""

    pattern: str = Field(min_length=1, description="Sensor-id pattern; the first match wins.")
    min: float | None = Field(None, description="A reading below this is out of range.")
    max: float | None = Field(None, description="A reading above this is out of range.")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        from streamwatch.pipeline.faults import compile_pattern

        compile_pattern(v)
        return v

    @model_validator(mode="after")
    def _ordered(self) -> FaultRange:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class FaultsConfig(_Strict):
    """Sensor-fault checks beside the model (stuck, rail, out of range, silent): cheap,
    always on, and reported as ``kind: sensor_fault`` apart from process anomalies."""

    enabled: bool = Field(True, description="Run the sensor-fault checks.")
    stuck_span: int = Field(
        10, ge=3, description="Readings (newest of each window) a stuck sensor holds flat."
    )
    stuck_ratio: float = Field(
        0.1,
        ge=0,
        description="Stuck: the span's spread is at most this fraction of the sensor's learned "
        "step noise (the median change between readings).",
    )
    quantisation_share: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Quantisation: a window of a sensor whose readings never repeat holds at "
        "most this share of distinct values (0 turns it off).",
    )
    learn_windows: int = Field(
        25,
        ge=1,
        description="A sensor a trained model knows (no warm-up) learns its noise and range "
        "from this many normal windows that do not overlap.",
    )
    reclassify_verdicts: int = Field(
        20,
        ge=0,
        description="A process alert is made a sensor fault (published again, reason "
        "reclassified) if a fault check finds one within this many verdicts of its raise.",
    )
    silent_min_s: float = Field(
        60.0,
        gt=0,
        description="Silent: no reading for the longer of this and the sensor's gap limit "
        "(learning.gap_factor x its longest warm-up interval); judged every idle sweep.",
    )
    ranges: list[FaultRange] = Field([], description="Physical limits per sensor pattern.")


class LearningConfig(_Strict):
    """Runtime policy for learning: when a sensor is learned and scored, and whether the
    daemon trains a model itself. Not saved in model bundles."""

    warmup: int = Field(
        500, ge=10, description="Readings a sensor without a model collects before scoring."
    )
    auto_train: bool = Field(
        True,
        description="Window detectors without model_dir: train in the background once data "
        "suffices (a Gaussian scores meanwhile).",
    )
    auto_train_readings: int = Field(
        2000, ge=100, description="Readings per sensor before auto-training starts."
    )
    auto_train_retries: int = Field(
        2,
        ge=0,
        description="An auto-trained model refused for ending on the plateau: collect again, "
        "each time twice the readings of the last, and retry, at most this many times.",
    )
    gap_factor: float = Field(
        3.0,
        ge=0,
        description="A reading after a gap longer than this many times the longest interval "
        "in the sensor's first `warmup` readings is anomalous (a dropout); 0 turns it off.",
    )
    feed_outage_sensors: int = Field(
        2,
        ge=0,
        description="A silence in which no sensor of the feed reported at all is a feed "
        "outage (logger, network, broker): logged and counted once, not a dropout alert on "
        "every sensor. Needs at least this many sensors tracked; 0 turns it off.",
    )
    follow_half_life: int = Field(
        0,
        ge=0,
        description="Protected adaptation: a sensor's normal level follows slow drift with "
        "this half-life in readings, learning only from readings judged normal, outside an "
        "alert and `follow_guard` readings clear of any anomalous verdict; 0 turns it off.",
    )
    follow_guard: int = Field(
        60,
        ge=0,
        description="Readings after an anomalous verdict before adaptation resumes.",
    )
    lasting_s: float = Field(
        43200.0,
        ge=0,
        description="A lasting change: an alert still anomalous this many seconds after it "
        "was raised is cleared with reason 'rebaselined' and the sensor's normal level is "
        "re-learned from its latest window (one alert per lasting shift, not one a refractory "
        "period), if the window is normal at the new level; otherwise the alert holds. 0: "
        "every alert holds, raised until the signal returns.",
    )


class EngineConfig(_Strict):
    """The worker that scores readings."""

    queue_readings: int = Field(
        200000, ge=100, description="Hand-off bound; past it the oldest readings are shed."
    )
    max_batch: int = Field(4096, ge=1, description="Most windows scored in one model call.")
    drain_timeout_s: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, the longest the worker may go on scoring the readings it "
        "already holds (they were acknowledged); keep it under systemd's TimeoutStopSec.",
    )
    tf_intra_threads: int = Field(2, ge=0, description="TensorFlow intra-op threads (0: TF's).")
    tf_inter_threads: int = Field(1, ge=0, description="TensorFlow inter-op threads (0: TF's).")
    inference: Literal["auto", "litert", "tensorflow", "numpy"] = Field(
        "auto",
        description="How a trained LSTM-VAE bundle scores: litert (the bundle's LiteRT models, "
        "from `train`; needs ai-edge-litert; numpy for a network without one), tensorflow "
        "(tf.function, XLA), numpy (no TensorFlow in memory), auto (litert where the bundle "
        "has it and ai-edge-litert is installed, else TensorFlow if installed, else numpy).",
    )


class MetricsConfig(_Strict):
    """The Prometheus endpoint (also /healthz and /readyz)."""

    enabled: bool = True
    host: str = Field(
        "127.0.0.1",
        description='Bind address: local only by default; "0.0.0.0" for a remote Prometheus.',
    )
    port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535, description="0 picks a free port.")
    max_sensor_labels: int = Field(
        1000, ge=0, description='Sensors past this share the label sensor="_other".'
    )
    basic_auth_user: str | None = Field(None, description="Require HTTP basic auth as this user.")
    basic_auth_password_env: str | None = Field(
        None, description="Env var holding the basic-auth password."
    )
    live_page: bool = Field(True, description="Serve the live page at / and /api/state.")
    tls_cert_file: Path | None = Field(None, description="Serve HTTPS with this certificate.")
    tls_key_file: Path | None = Field(None, description="... and this key.")

    @model_validator(mode="after")
    def _pairs(self) -> MetricsConfig:
        if (self.basic_auth_user is None) != (self.basic_auth_password_env is None):
            raise ValueError("basic_auth_user and basic_auth_password_env go together")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) when basic auth is configured; ConfigError if the env var is unset."""
        if self.basic_auth_user is None or self.basic_auth_password_env is None:
            return None
        password = os.environ.get(self.basic_auth_password_env)
        if password is None:
            raise ConfigError(
                [f"metrics.basic_auth_password_env: {self.basic_auth_password_env} is not set"]
            )
        return self.basic_auth_user, password


class IngestConfig(_Strict):
    """Which transport feeds the worker (the engine does not know which)."""

    transport: Literal["mqtt", "jetstream"] = Field(
        "mqtt",
        description="mqtt: the [mqtt] broker (the default). jetstream: the partitions this "
        "daemon owns in a NATS JetStream stream ([nats]); alerts then go to NATS subjects.",
    )


_NAME = re.compile(r"[A-Za-z0-9_-]+")
"""A daemon id or KV bucket name part."""


def parse_partitions(spec: str) -> list[int]:
    """``"0-7,12,16-31"`` as a sorted list of partition numbers; ValueError says what is wrong."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"{part!r} is not a partition number or a range like 0-31") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"bad range {part!r}: want 0 <= first <= last")
        dup = out.intersection(range(lo, hi + 1))
        if dup:
            raise ValueError(f"partition {min(dup)} is listed twice")
        out.update(range(lo, hi + 1))
    return sorted(out)


class NATSConfig(_Strict):
    """NATS JetStream ingest (``ingest.transport = "jetstream"``): see docs/scale-out.md."""

    url: str = Field(
        "nats://localhost:4222", description="nats://HOST:PORT (or a list, comma-separated)"
    )
    stream: str = Field("SENSORS", min_length=1, description="The stream holding the readings.")
    subject_prefix: str = Field(
        "streamwatch.in",
        min_length=1,
        description="Partitioned subjects are <subject_prefix>.<partition>.<sensor tokens>; the "
        "server's subject mapping puts each sensor's readings into one partition.",
    )
    consumer: str = Field(
        "streamwatch",
        min_length=1,
        description="Durable pull consumer name prefix: partition n is consumed by <consumer>-n.",
    )
    partition_count: int = Field(
        32, ge=1, le=4096, description="P: the n in the mapping's {{partition(n, ...)}}."
    )
    partitions: str = Field(
        "0-31",
        description='Partitions this daemon owns with ownership = "static", e.g. "0-15" or '
        '"0-7,12".',
    )
    ownership: Literal["static", "lease"] = Field(
        "static",
        description="static: `partitions` says which this daemon reads. lease: daemons share "
        "every partition among themselves through leases in the JetStream KV bucket "
        "<consumer>_leases (a dead daemon's partitions move to the others after lease_ttl_s).",
    )
    lease_ttl_s: float = Field(
        10.0,
        ge=3.0,
        le=600.0,
        description="ownership = lease: a lease not renewed for this long is taken over; its "
        "holder stops reading the partition after half of it without a renewal.",
    )
    daemon_id: str | None = Field(
        None,
        description="ownership = lease: this daemon's name in the lease bucket (default: "
        "host-pid-random). Letters, digits, - and _ only.",
    )
    replay_s: float = Field(
        120.0,
        ge=0.0,
        description="ownership = lease: on taking a partition over, the stream's readings from "
        "this many seconds before the last acknowledged one are replayed into the windows as "
        "context (not scored, no alerts), so windows resume instead of starting empty.",
    )
    ack_wait_s: float = Field(
        30.0,
        gt=0,
        description="JetStream redelivers a message not acknowledged within this (a daemon "
        "killed mid-slice: its readings go to the next owner after this long).",
    )
    max_ack_pending: int = Field(
        1000, ge=1, description="Unacknowledged messages per partition (the backpressure)."
    )
    fetch_batch: int = Field(100, ge=1, le=10000, description="Messages per pull request.")

    @field_validator("url")
    @classmethod
    def _nats_url(cls, v: str) -> str:
        for url in v.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError("must look like nats://HOST:PORT (comma-separated for several)")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _subject(cls, v: str) -> str:
        if any(c in v for c in " *>\t") or "" in v.split("."):
            raise ValueError("must be dot-separated tokens without spaces or wildcards")
        return v

    @field_validator("partitions")
    @classmethod
    def _partitions(cls, v: str) -> str:
        parse_partitions(v)
        return v

    @field_validator("daemon_id")
    @classmethod
    def _daemon_id(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError("letters, digits, - and _ only")
        return v

    @model_validator(mode="after")
    def _owned_in_range(self) -> NATSConfig:
        if self.ownership == "lease" and "partitions" in self.model_fields_set:
            raise ValueError(
                'partitions: not used with ownership = "lease" (the daemons share every '
                "partition); remove it"
            )
        if self.ownership == "lease" and not _NAME.fullmatch(self.consumer):
            raise ValueError('consumer: letters, digits, - and _ only with ownership = "lease"')
        if self.ownership == "static" and self.owned()[-1] >= self.partition_count:
            raise ValueError(
                f"partitions: {self.owned()[-1]} is not below partition_count "
                f"({self.partition_count})"
            )
        return self

    def owned(self) -> list[int]:
        """The partition numbers this daemon consumes (static ownership)."""
        return parse_partitions(self.partitions)

    @property
    def lease_bucket(self) -> str:
        """The KV bucket holding the partition leases and the daemons' heartbeats."""
        return f"{self.consumer}_leases"

    @property
    def alert_bucket(self) -> str:
        """The KV bucket holding each sensor's open alert (ownership = lease)."""
        return f"{self.consumer}_alerts"


class Config(_Strict):
    """The whole configuration."""

    ingest: IngestConfig = IngestConfig()
    mqtt: MQTTConfig = MQTTConfig()
    nats: NATSConfig = NATSConfig()
    payload: PayloadConfig = PayloadConfig()
    sparkplug: SparkplugConfig = SparkplugConfig()
    windows: WindowConfig = WindowConfig()
    detector: DetectorConfig = RobustConfig()
    learning: LearningConfig = LearningConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    alerts: AlertConfig = AlertConfig()
    engine: EngineConfig = EngineConfig()
    metrics: MetricsConfig = MetricsConfig()
    groups: GroupsConfig = GroupsConfig()
    faults: FaultsConfig = FaultsConfig()
    model_dir: Path | None = Field(None, description="Model bundle to load at start.")
    state_dir: Path | None = Field(None, description="Where alert state survives restarts.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


_DETECTOR_TAGS = ("gaussian", "gmm", "robust", "lstm-vae", "mahalanobis", "rvae")


def _format_errors(exc: ValidationError, source: str) -> list[str]:
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        if len(parts) > 1 and parts[0] == "detector" and parts[1] in _DETECTOR_TAGS:
            del parts[1]  # pydantic puts the union's tag in the path; the user never wrote it
        if parts[:2] == ["groups", "detector"] and len(parts) > 2 and parts[2] in _DETECTOR_TAGS:
            del parts[2]  # pydantic puts the union's tag in the path; the user never wrote it
        loc = ".".join(parts)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # Never echo the offending value: it might be a secret.
        lines.append(f"{source}: {loc or '<root>'}: {msg}")
    return lines


def from_mapping(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed mapping; raise ConfigError with one line per bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load(path: Path | None) -> Config:
    """Read and validate a TOML config file; ``None`` gives all defaults."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return from_mapping(data, str(path))


def override(cfg: Config, updates: dict[str, Any]) -> Config:
    """Apply dotted-key overrides (from CLI flags) and re-validate the result."""
    data = cfg.model_dump(mode="python", exclude_unset=True)
    data.setdefault("detector", {})["type"] = cfg.detector.type  # the union's tag
    for dotted, value in updates.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if leaf == "type" and parents == ["detector"] and node.get("type") != value:
            # A different detector type starts from that type's defaults.
            node.clear()
        node[leaf] = value
    return from_mapping(data, "command line")
