"""Move a host's latest resources from a pointer to its latest snapshot onto the host row."""

from django.db import migrations, models


def copy_latest(apps, schema_editor):
    Host = apps.get_model("registry", "Host")
    for host in Host.objects.exclude(latest_snapshot=None).select_related("latest_snapshot"):
        snap = host.latest_snapshot
        host.cpu_percent = snap.cpu_percent
        host.ram_used_bytes = snap.ram_used_bytes
        host.ram_total_bytes = snap.ram_total_bytes
        host.vram_used_bytes = snap.vram_used_bytes
        host.vram_total_bytes = snap.vram_total_bytes
        host.gpus = snap.gpus
        host.history_at = snap.reported_at
        host.save()


class Migration(migrations.Migration):
    dependencies = [("registry", "0002_endpoint_address_name")]

    operations = [
        migrations.AddField("host", "cpu_percent", models.FloatField(blank=True, null=True)),
        migrations.AddField("host", "ram_used_bytes", models.BigIntegerField(blank=True, null=True)),
        migrations.AddField("host", "ram_total_bytes", models.BigIntegerField(blank=True, null=True)),
        migrations.AddField("host", "vram_used_bytes", models.BigIntegerField(blank=True, null=True)),
        migrations.AddField("host", "vram_total_bytes", models.BigIntegerField(blank=True, null=True)),
        migrations.AddField("host", "gpus", models.JSONField(blank=True, default=list)),
        migrations.AddField("host", "announced_at", models.DateTimeField(blank=True, editable=False, null=True)),
        migrations.AddField("host", "history_at", models.DateTimeField(blank=True, editable=False, null=True)),
        migrations.RunPython(copy_latest, migrations.RunPython.noop),
        migrations.RemoveField("host", "latest_snapshot"),
    ]
