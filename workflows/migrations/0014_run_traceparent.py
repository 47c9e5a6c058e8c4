# The run span's W3C traceparent (workflows/infra/tracing.py): the parent of every attempt's span.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("workflows", "0012_connections"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="traceparent",
            # db_default: rows written by raw SQL (seeding, other tools) need no value.
            field=models.CharField(blank=True, default="", db_default="", max_length=55),
        ),
    ]
