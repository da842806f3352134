"""Dihya's shared package: the message contracts and the few helpers every service needs.

Services are linked only through what lives here (design invariant 1): the pydantic contracts,
the RabbitMQ topology names, and small runtime helpers (broker adapter, settings base, logging,
storage bootstrap, ops endpoints, token auth). No service's business logic belongs here.
"""
