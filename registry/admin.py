"""Django admin for operators; every change goes through registry.services."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count

from registry import notify, services
from registry.models import Alert, AlertDelivery, AlertTarget, Endpoint, Host, ResourceSnapshot, Token


def _by(request) -> str:
    """Who is acting, as events name them."""
    return f"user {request.user.get_username()} (admin)"


class EndpointForm(forms.ModelForm):
    """The address is typed as text (name, IP or URL); the service finds or creates the Host row.

    The Authorization header is write-only: the form never shows it (blank keeps what is stored).
    """

    address = forms.CharField(
        label="Address",
        max_length=300,
        help_text="Host name, IP address or URL; https://gpu-02:11434 is probed over TLS.",
    )
    scheme = forms.ChoiceField(
        choices=Endpoint.Scheme.choices,
        help_text="https: probed over TLS, the certificate verified (system store or PROBE_CA_BUNDLE).",
    )
    # Not named after the model field: that one is not editable, so the admin would refuse it.
    authorization_header = forms.CharField(
        label="Authorization header",
        required=False,
        strip=False,
        max_length=2048,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Sent with every probe, for an Ollama behind an authenticating proxy (e.g. "
        "<code>Bearer abc123</code>). Never shown again; leave blank to keep the stored one.",
    )
    remove_authorization = forms.BooleanField(
        label="Remove the Authorization header", required=False, help_text="Probe without it from now on."
    )

    class Meta:
        model = Endpoint
        fields = ["port", "name"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["address"].initial = self.instance.address
            self.fields["address"].disabled = True
            self.fields["scheme"].initial = self.instance.scheme
            if self.instance.source == Endpoint.Source.AUTO:  # its sidecar's next report would undo a change
                self.fields["scheme"].disabled = True
                self.fields["scheme"].help_text = "Follows the URL its sidecar advertises (--advertise-url)."
            if self.instance.has_auth:
                self.fields["authorization_header"].help_text += " One is stored now."
        else:
            # A new endpoint's scheme comes from its address: https://... or plain http.
            del self.fields["scheme"]
            del self.fields["remove_authorization"]

    def clean(self):
        data = super().clean()
        authorization = data.get("authorization_header") or None  # blank: keep (or none)
        if data.get("remove_authorization"):
            if authorization:
                raise ValidationError("Give a new Authorization header or remove it, not both.")
            authorization = ""
        data["authorization_header"] = authorization
        try:
            if self.instance.pk:
                services.parse_endpoint(self.instance.address, data.get("port"), data.get("name", ""), authorization)
            else:
                services.check_registrable(
                    data.get("address", ""), data.get("port"), data.get("name", ""), authorization=authorization
                )
        except services.RegistryError as exc:
            raise ValidationError(exc.detail) from None
        return data


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = [
        "status",
        "scheme",
        "address",
        "port",
        "name",
        "model_count",
        "source",
        "host_name",
        "auth_set",
        "last_checked_at",
    ]
    list_filter = ["status", "source", "scheme"]
    search_fields = ["address", "host__name", "name"]
    readonly_fields = [
        "source",
        "status",
        "consecutive_failures",
        "last_checked_at",
        "last_error",
        "latency_ms",
        "version",
        "registered_at",
    ]
    actions = ["probe_now", "remove_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("host").annotate(_models=Count("models"))

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is None:  # a new endpoint's scheme comes from its address; nothing to remove yet
            fields = [f for f in fields if f not in ("scheme", "remove_authorization")]
        return fields

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # replaced by remove_selected, which uses services
        return actions

    @admin.display(description="host", ordering="host__name")
    def host_name(self, obj: Endpoint) -> str:
        return obj.host.name

    @admin.display(description="auth header", boolean=True)
    def auth_set(self, obj: Endpoint) -> bool:
        return obj.has_auth  # whether one is stored, never what it is

    @admin.display(description="models", ordering="_models")
    def model_count(self, obj: Endpoint) -> int:
        return obj._models

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        try:
            if change:
                saved = services.update_endpoint(
                    obj.pk,
                    port=data["port"],
                    name=data["name"],
                    scheme=data["scheme"],
                    authorization=data["authorization_header"],
                    by=_by(request),
                )
            else:
                saved, _ = services.register_endpoint(
                    data["address"],
                    data["port"],
                    data["name"],
                    by=_by(request),
                    authorization=data["authorization_header"],
                )
        except services.RegistryError as exc:
            # The form checked this already; only a concurrent change can land here.
            self.message_user(request, exc.detail, messages.ERROR)
            return
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        services.remove_endpoint(obj.pk, by=_by(request))

    def delete_queryset(self, request, queryset):
        services.remove_endpoints(queryset.values_list("id", flat=True), by=_by(request))

    @admin.action(description="Probe now", permissions=["change"])
    def probe_now(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        try:
            services.queue_probe(ids)
        except Exception as exc:  # the broker is down: say so instead of a 500
            self.message_user(request, f"Could not queue the probe ({exc.__class__.__name__}).", messages.ERROR)
            return
        self.message_user(request, f"Queued a probe of {len(ids)} endpoint(s); the list updates when it is done.")

    @admin.action(description="Remove selected endpoints", permissions=["delete"])
    def remove_selected(self, request, queryset):
        removed = services.remove_endpoints(queryset.values_list("id", flat=True), by=_by(request))
        self.message_user(request, f"Removed {len(removed)} endpoint(s).")


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ["name", "hostname", "last_report_at", "endpoint_count"]
    search_fields = ["name", "hostname"]
    # Hosts are created by registrations and reports (through the services); renaming or
    # deleting one here would bypass them, so the admin only shows hosts.
    readonly_fields = ["name", "hostname", "last_report_at", *Host.RESOURCE_FIELDS, "created_at"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_endpoints=Count("endpoints"))

    @admin.display(description="endpoints", ordering="_endpoints")
    def endpoint_count(self, obj: Host) -> int:
        return obj._endpoints


@admin.register(ResourceSnapshot)
class ResourceSnapshotAdmin(admin.ModelAdmin):
    list_display = ["host", "cpu_percent", "ram_used_bytes", "ram_total_bytes", "vram_used_bytes", "reported_at"]
    list_filter = ["host"]
    date_hierarchy = "reported_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Token)
class TokenAdmin(admin.ModelAdmin):
    list_display = ["label", "scope", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["scope"]
    search_fields = ["label", "prefix"]
    fields = ["label", "scope", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields + (["label", "scope"] if obj else [])

    def save_model(self, request, obj, form, change):
        if change:
            return
        token, raw = services.create_token(form.cleaned_data["scope"], form.cleaned_data["label"])
        obj.pk = token.pk
        obj.refresh_from_db()
        self.message_user(request, f"New token (shown once, copy it now): {raw}", messages.WARNING)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = services.revoke_tokens(queryset.values_list("id", flat=True))
        self.message_user(request, f"Revoked {count} token(s).")


class AlertTargetForm(forms.ModelForm):
    """URL and secret are write-only: Apprise URLs carry tokens; left blank on edit, they are kept."""

    url = forms.CharField(
        label="URL",
        max_length=2000,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "size": 80}),
        help_text="Apprise URL (ntfy://topic, slack://..., mailto://..., json://host/path) or, for a webhook, "
        "its http(s) URL. Not shown again; leave blank to keep the current one.",
    )
    secret = forms.CharField(
        label="Webhook secret",
        max_length=200,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Webhook only: the HMAC-SHA256 key receivers verify with. Leave blank to keep the current one.",
    )

    class Meta:
        model = AlertTarget
        fields = ["label", "kind", "url", "secret", "enabled"]

    def clean(self):
        data = super().clean()
        url = data.get("url") or self.instance.url
        secret = data.get("secret") or self.instance.secret
        if not url:
            raise ValidationError({"url": "Give the URL to send to."})
        try:
            services.check_alert_target(data.get("kind", ""), url, secret)
        except services.RegistryError as exc:
            raise ValidationError(exc.detail) from None
        data["url"], data["secret"] = url, secret
        return data


@admin.register(AlertTarget)
class AlertTargetAdmin(admin.ModelAdmin):
    form = AlertTargetForm
    list_display = ["label", "kind", "destination", "enabled", "created_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["label"]
    readonly_fields = ["destination"]
    actions = ["send_test", "delete_selected_targets"]

    @admin.display(description="destination")
    def destination(self, obj: AlertTarget) -> str:
        return notify.mask_url(obj.url) if obj.url else "-"

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # replaced by delete_selected_targets, which uses services
        return actions

    def save_model(self, request, obj, form, change):
        obj.url, obj.secret = form.cleaned_data["url"], form.cleaned_data["secret"]
        services.save_alert_target(obj)

    def delete_model(self, request, obj):
        services.delete_alert_targets([obj.pk])

    @admin.action(description="Delete selected alert targets", permissions=["delete"])
    def delete_selected_targets(self, request, queryset):
        count = services.delete_alert_targets(queryset.values_list("id", flat=True))
        self.message_user(request, f"Deleted {count} alert target(s).")

    @admin.action(description="Send test notification", permissions=["change"])
    def send_test(self, request, queryset):
        try:
            count = services.send_test_alert(queryset.values_list("id", flat=True))
        except Exception as exc:  # the database or broker is away: say so instead of a 500
            self.message_user(request, f"Could not queue the test ({exc.__class__.__name__}).", messages.ERROR)
            return
        self.message_user(
            request,
            f"Queued a test notification to {count} target(s); see Alert deliveries for the outcome.",
        )


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    fields = ["target_label", "status", "attempts", "last_error", "sent_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["at", "kind", "title", "delivered"]
    list_filter = ["kind"]
    search_fields = ["title", "host"]
    fields = ["at", "kind", "host", "title", "text", "endpoints"]
    readonly_fields = fields
    inlines = [AlertDeliveryInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deliveries")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="deliveries")
    def delivered(self, obj: Alert) -> str:
        counts: dict[str, int] = {}
        for delivery in obj.deliveries.all():
            counts[delivery.status] = counts.get(delivery.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no targets"
