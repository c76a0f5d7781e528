"""Side effects of a flow run (contract §7): the outbox, Slack, the CRM, logs and the email."""
