"""NOTIFY the relays when outbox rows commit, so an idle relay wakes at once instead of polling.

A statement-level trigger sends one NOTIFY per insert statement (a bulk insert is one wake-up),
and PostgreSQL delivers it only when the transaction commits, and not at all on rollback.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION notifications_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('notif_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER notifications_outbox_notify
AFTER INSERT ON notifications_outboxevent
FOR EACH STATEMENT EXECUTE FUNCTION notifications_outbox_notify();
"""

DROP = """
DROP TRIGGER IF EXISTS notifications_outbox_notify ON notifications_outboxevent;
DROP FUNCTION IF EXISTS notifications_outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("notifications", "0001_initial")]
    operations = [migrations.RunSQL(CREATE, DROP)]
