"""Who acts: organisations, their users and clients, and what each kind may do.

Neutral ground: every feature reads these; none of them owns them."""
