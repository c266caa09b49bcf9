"""Django admin for operators; every change goes through registry.services."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count

from registry import services
from registry.models import Endpoint, Host, ResourceSnapshot, Token


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
                )
            else:
                saved, _ = services.register_endpoint(
                    data["address"], data["port"], data["name"], authorization=data["authorization_header"]
                )
        except services.RegistryError as exc:
            # The form checked this already; only a concurrent change can land here.
            self.message_user(request, exc.detail, messages.ERROR)
            return
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        services.remove_endpoint(obj.pk)

    def delete_queryset(self, request, queryset):
        services.remove_endpoints(queryset.values_list("id", flat=True))

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
        removed = services.remove_endpoints(queryset.values_list("id", flat=True))
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
