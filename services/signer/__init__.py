"""Signer: turns a delivery job into the exact, signed HTTP request the deliverer will POST.

It is the only service that ever holds a webhook secret. Secrets arrive on the control queue
(``EndpointSecret``, from ingest) and are kept encrypted at rest in the signer's own keystore
(Fernet, master key from the environment). For each ``DeliveryJob`` — a first attempt from
ingest or a retry coming back from the deliverer through a delay tier — the signer renders the
body, signs it with a fresh timestamp and nonce (``X-Dihya-Signature`` and Standard Webhooks
headers) and hands a ``SignedDelivery`` to the deliverer. Re-signing every attempt is what keeps
the timestamp fresh for the receiver's replay window while the message id stays stable.
"""
