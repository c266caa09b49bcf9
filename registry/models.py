"""The registry's state: hosts, Ollama endpoints, their models, resource reports, API tokens."""

from __future__ import annotations

import hashlib

from django.db import models
from django.utils import timezone

from registry.schemas import host_for_url


class Host(models.Model):
    """A machine: endpoints and resource reports attach to it."""

    # The resource columns a sidecar report sets (also on ResourceSnapshot, the history).
    RESOURCE_FIELDS = (
        "cpu_percent",
        "ram_used_bytes",
        "ram_total_bytes",
        "vram_used_bytes",
        "vram_total_bytes",
        "gpus",
    )

    name = models.CharField(max_length=253, unique=True, help_text="How the hub names this machine.")
    hostname = models.CharField(max_length=253, blank=True, help_text="What the machine calls itself.")
    # The latest report, exactly as the sidecar sent it (null until the first report). Kept on
    # the host row so that a report is one UPDATE and the snapshot reads one table.
    last_report_at = models.DateTimeField(null=True, blank=True)
    cpu_percent = models.FloatField(null=True, blank=True)
    ram_used_bytes = models.BigIntegerField(null=True, blank=True)
    ram_total_bytes = models.BigIntegerField(null=True, blank=True)
    vram_used_bytes = models.BigIntegerField(null=True, blank=True)
    vram_total_bytes = models.BigIntegerField(null=True, blank=True)
    gpus = models.JSONField(default=list, blank=True)
    # When open dashboards were last told about this host's resources (on a visible change,
    # and at least every STALE_AFTER_SECONDS / 3 while it reports, so pages never see it stale).
    announced_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the last history row (ResourceSnapshot) was written: one per RESOURCE_HISTORY_SECONDS.
    history_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the hub noticed the sidecar had gone silent (a host_silent event was recorded); cleared,
    # with a host_back event, by its next report. Null while it reports (or never reported).
    silent_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Endpoint(models.Model):
    """An Ollama server at host:port."""

    class Source(models.TextChoices):
        MANUAL = "manual", "manual"
        AUTO = "auto", "auto"

    class Status(models.TextChoices):
        UNKNOWN = "unknown", "unknown"
        HEALTHY = "healthy", "healthy"
        UNHEALTHY = "unhealthy", "unhealthy"

    class Scheme(models.TextChoices):
        HTTP = "http", "http"
        HTTPS = "https", "https (TLS, certificate verified)"

    # The machine (resources attach there) and the address the hub connects to: the same
    # text for a manual registration, but a sidecar may name its machine "gpu-01" while
    # advertising its Ollama at 10.0.0.2.
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="endpoints")
    address = models.CharField(max_length=253, help_text="Host name or IP address the hub connects to.")
    port = models.PositiveIntegerField(default=11434)
    scheme = models.CharField(max_length=5, choices=Scheme.choices, default=Scheme.HTTP)
    # The value of an Authorization header sent with every probe (an Ollama behind an
    # authenticating proxy). Write-only: stored as given (the probe must send it), never put in
    # a row, frame, log or admin page; readers see only whether it is set (rows' has_auth).
    authorization = models.CharField(max_length=2048, blank=True, editable=False)
    name = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MANUAL)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UNKNOWN)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    version = models.CharField(max_length=50, blank=True)
    registered_at = models.DateTimeField(default=timezone.now)
    # Bumped with every visible change, so that a reader holding two versions of a row
    # (events from several processes can cross) keeps the newer one.
    revision = models.PositiveBigIntegerField(default=0, editable=False)
    # A probe lease: a sweep claims endpoints by writing its token here, so two sweeps never
    # probe the same endpoint at once; the lease lapses by itself if a worker dies.
    probe_claim = models.CharField(max_length=32, blank=True, editable=False)
    probe_claimed_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["address", "port"]
        constraints = [models.UniqueConstraint(fields=["address", "port"], name="endpoint_unique_address_port")]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["probe_claimed_until"])]

    def __str__(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        return self.url_for(self.address, self.port, self.scheme)

    @property
    def has_auth(self) -> bool:
        return bool(self.authorization)

    @staticmethod
    def url_for(address: str, port: int, scheme: str = "http") -> str:
        return f"{scheme}://{host_for_url(address)}:{port}"


class EndpointModel(models.Model):
    """A model an endpoint holds (from /api/tags), and whether it is loaded (from /api/ps)."""

    # What a probe reports of a model, besides its name.
    DETAIL_FIELDS = (
        "digest",
        "size",
        "family",
        "parameter_size",
        "quantization",
        "modified_at",
        "loaded",
        "size_vram",
        "expires_at",
    )

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200)
    digest = models.CharField(max_length=100, blank=True)
    size = models.BigIntegerField(default=0)
    family = models.CharField(max_length=100, blank=True)
    parameter_size = models.CharField(max_length=50, blank=True)
    quantization = models.CharField(max_length=50, blank=True)
    modified_at = models.DateTimeField(null=True, blank=True)
    loaded = models.BooleanField(default=False)
    size_vram = models.BigIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "name"], name="model_unique_per_endpoint")]

    def __str__(self) -> str:
        return self.name


class ResourceSnapshot(models.Model):
    """A host's resources at one moment (history, one row per RESOURCE_HISTORY_SECONDS per host);
    pruned after RESOURCE_RETENTION_HOURS. The latest values live on Host."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="snapshots")
    cpu_percent = models.FloatField()
    ram_used_bytes = models.BigIntegerField()
    ram_total_bytes = models.BigIntegerField()
    vram_used_bytes = models.BigIntegerField(null=True, blank=True)
    vram_total_bytes = models.BigIntegerField(null=True, blank=True)
    gpus = models.JSONField(default=list, blank=True)
    reported_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-reported_at"]
        get_latest_by = "reported_at"
        # A host's curve reads its rows of a window; by host_id alone SQLite walks all its day.
        indexes = [models.Index(fields=["host", "reported_at"], name="snapshot_host_reported")]

    def __str__(self) -> str:
        return f"{self.host} @ {self.reported_at:%Y-%m-%d %H:%M:%S}"


class ResourceRollup(models.Model):
    """A host's resources over one 15-minute bucket: min/avg/max of its history rows there.

    Written by the roll-up task from ResourceSnapshot (never on the report path); kept
    HISTORY_RETENTION_DAYS. Percent values (of the total at the time), so the row stays small.
    """

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="rollups")
    start = models.DateTimeField()
    samples = models.PositiveIntegerField()
    cpu_min = models.FloatField()
    cpu_avg = models.FloatField()
    cpu_max = models.FloatField()
    ram_avg = models.FloatField()
    ram_max = models.FloatField()
    vram_avg = models.FloatField(null=True, blank=True)  # summed over the GPUs; null without a GPU
    vram_max = models.FloatField(null=True, blank=True)
    gpus = models.JSONField(default=list, blank=True)  # [[index, avg %, max %], ...]

    class Meta:
        ordering = ["host", "start"]
        constraints = [models.UniqueConstraint(fields=["host", "start"], name="rollup_unique_host_start")]
        indexes = [models.Index(fields=["start"])]

    def __str__(self) -> str:
        return f"{self.host_id} @ {self.start:%Y-%m-%d %H:%M}"


class LatencySample(models.Model):
    """One probe chunk's latencies, as the probe path wrote them: ONE row per chunk, not per probe.

    `data` is compact JSON, [[endpoint id, ms or null when the probe failed], ...]. The roll-up
    task (every minute) adds them to EndpointLatency minutes and deletes them.
    """

    at = models.DateTimeField(db_index=True)
    data = models.TextField()

    def __str__(self) -> str:
        return f"latency sample @ {self.at:%Y-%m-%d %H:%M:%S}"


class EndpointLatency(models.Model):
    """An endpoint's probes over one minute (span 60, kept RESOURCE_RETENTION_HOURS) or one
    15-minute bucket (span 900, rolled up from the minutes, kept HISTORY_RETENTION_DAYS).

    Written by the roll-up task only (from LatencySample rows), never on the probe path.
    `endpoint_id` is no foreign key: removing 1,000 endpoints must not cascade through millions
    of rows; the prune task drops orphans.
    """

    endpoint_id = models.BigIntegerField()
    start = models.DateTimeField()
    span = models.PositiveIntegerField()  # seconds
    probes = models.PositiveIntegerField()
    failures = models.PositiveIntegerField()
    total_ms = models.BigIntegerField()  # summed latency of the probes that answered
    min_ms = models.PositiveIntegerField(null=True, blank=True)
    max_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["endpoint_id", "span", "start"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint_id", "span", "start"], name="latency_unique_endpoint_span_start")
        ]
        indexes = [models.Index(fields=["span", "start"])]

    def __str__(self) -> str:
        return f"endpoint {self.endpoint_id} @ {self.start:%Y-%m-%d %H:%M} ({self.span} s)"


class Token(models.Model):
    """An API bearer token; only its SHA-256 is stored."""

    class Scope(models.TextChoices):
        SIDECAR = "sidecar", "sidecar (may only report)"
        ADMIN = "admin", "admin (may manage endpoints)"
        AGENT = "agent", "agent (may only read routes and the snapshot)"
        METRICS = "metrics", "metrics (may only read /metrics)"

    label = models.CharField(max_length=100)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    # A sidecar token reports for one machine only: set at creation (--host) or by its first report.
    host = models.CharField(max_length=253, blank=True, help_text="The one machine a sidecar token reports for.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="First characters, to recognise it.")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.label} ({self.scope}, {self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()


class Event(models.Model):
    """Something that happened in the fleet, kept for the timeline, uptime and alerts.

    Events name their endpoint by id and by label (the endpoint may be removed later; its
    events stay) and their machine by host name. `detail` holds what the kind needs, e.g.
    {"from": "healthy", "to": "unhealthy", "reason": "connection refused"} for a status change,
    {"model": "llama3:latest"} for a model event, {"by": "admin token 'ci'"} for registration.
    """

    class Kind(models.TextChoices):
        STATUS = "status", "status changed"
        MODEL_ADDED = "model_added", "model added"
        MODEL_REMOVED = "model_removed", "model removed"
        MODEL_LOADED = "model_loaded", "model loaded"
        MODEL_UNLOADED = "model_unloaded", "model unloaded"
        REGISTERED = "registered", "endpoint registered"
        REMOVED = "removed", "endpoint removed"
        CHANGED = "changed", "endpoint changed"
        HOST_SILENT = "host_silent", "sidecar went silent"
        HOST_BACK = "host_back", "sidecar reporting again"

    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    endpoint_id = models.BigIntegerField(null=True, blank=True)  # not a foreign key: outlives the endpoint
    endpoint_label = models.CharField(max_length=260, blank=True)
    host = models.CharField(max_length=253, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["endpoint_id", "at"]),
            models.Index(fields=["host", "at"]),
            models.Index(fields=["kind", "at"]),
            models.Index(fields=["at"]),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind} {self.endpoint_label or self.host}"


class AlertTarget(models.Model):
    """Where alerts go: an Apprise URL (Slack, Discord, Matrix, e-mail, ntfy, ...) or a signed JSON webhook."""

    class Kind(models.TextChoices):
        APPRISE = "apprise", "Apprise URL"
        WEBHOOK = "webhook", "JSON webhook (HMAC-SHA256 signed)"

    label = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.APPRISE)
    # Apprise URLs carry their tokens inside (slack://T000/B000/XXXX): never shown in lists.
    url = models.CharField(max_length=2000, help_text="Apprise URL (e.g. ntfy://topic) or the webhook's https URL.")
    secret = models.CharField(max_length=200, blank=True, help_text="Webhook only: the HMAC-SHA256 key.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["label"]

    def __str__(self) -> str:
        return self.label


class Alert(models.Model):
    """One message about the fleet (a group of transitions), sent to every target once."""

    class Kind(models.TextChoices):
        DOWN = "down", "unhealthy"
        UP = "up", "recovered"
        FLAPPING = "flapping", "flapping"
        STABLE = "stable", "stable again"
        TEST = "test", "test"

    # Unique per group of transitions: a processing run that is repeated never makes a second alert.
    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    host = models.CharField(max_length=253, blank=True)
    title = models.CharField(max_length=200)
    text = models.TextField()
    endpoints = models.JSONField(default=list, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["at"])]

    def __str__(self) -> str:
        return self.title


class AlertDelivery(models.Model):
    """One alert to one target; sent at most once (claimed by compare-and-set), retried on failure."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENDING = "sending", "sending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    # "target:<id>" (an AlertTarget) or "setting:<hash>" (a URL of ALERT_URLS / ALERT_WEBHOOK_URL).
    target_ref = models.CharField(max_length=40)
    target_label = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["alert", "target_ref"], name="alert_delivery_unique_target")]

    def __str__(self) -> str:
        return f"{self.alert} -> {self.target_label}"


class AlertPending(models.Model):
    """An alert-worthy event not yet turned into alerts (written with the event; deleted when handled)."""

    event = models.OneToOneField(Event, on_delete=models.CASCADE, primary_key=True, related_name="+")


class AlertEndpointState(models.Model):
    """An endpoint reported as flapping (kept quiet until stable; the row goes when it is)."""

    endpoint_id = models.BigIntegerField(unique=True)
    flapping_since = models.DateTimeField(null=True, blank=True)
    last_flip_at = models.DateTimeField(null=True, blank=True)
