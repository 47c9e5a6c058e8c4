from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("workflows", "0014_run_traceparent")]

    operations = [
        migrations.AddField(
            model_name="webhook",
            name="push_format",
            field=models.CharField(default="plain", max_length=16),
        ),
        migrations.AddField(
            model_name="webhook",
            name="format_options",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
