"""The web client: the lookup for duty officers, and for custodians their register and
the review of who asked (enquiries, alerts, notifications, the webhook, the log's
status). Server-rendered, no external assets, no script; every page through the same
services and audit events as the API."""
