from django.db import connection
from channels.db import database_sync_to_async
from django.conf import settings

async def test_probe(transactional_db):
    def q():
        from django.contrib.sessions.models import Session
        list(Session.objects.all())
        return connection.close_at, connection.settings_dict["CONN_MAX_AGE"], settings.DATABASES["default"].get("CONN_MAX_AGE"), connection.get_autocommit()
    print("INFO", await database_sync_to_async(q)())
    print("AFTER", await database_sync_to_async(lambda: connection.connection)())
