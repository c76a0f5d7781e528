"""Side effects of a flow run (SPEC §7): the outbox, Slack, the CRM, logs and the email."""
