"""The thin web client: a lookup page for duty officers and an audit review page for
custodians, server-rendered, no external assets, no script."""
