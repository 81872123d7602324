"""Faust's Kafka credentials, from the same librdkafka properties the other clients use.

A worker talks to Kafka through two client libraries: confluent-kafka (lanes, sinks, admin)
and aiokafka (Faust: the owners topic, tables, rebalances). Users configure one of them only,
the librdkafka way (``kafka_security_protocol`` / ``kafka_sasl_*`` settings or ``-X``
properties), and this module translates that into Faust's ``broker_credentials``, so both
libraries always log in as the same principal over the same transport.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import faust
from faust.types.auth import CredentialsT

from streaminfer.errors import ConfigError

__all__ = ["faust_credentials"]


def faust_credentials(config: Mapping[str, Any]) -> CredentialsT | None:
    """``broker_credentials`` for a Faust app reaching the brokers of librdkafka ``config``
    (``None`` for PLAINTEXT)."""
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
        if config.get("ssl.certificate.location"):  # mutual TLS: the client's own certificate
            context.load_cert_chain(config["ssl.certificate.location"],
                                    config.get("ssl.key.location"),
                                    config.get("ssl.key.password"))
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        mechanism = str(config.get("sasl.mechanism", config.get("sasl.mechanisms", "GSSAPI")))
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError(f"sasl.mechanism {mechanism!r}: the worker's Faust client "
                              "supports PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512")
        return faust.SASLCredentials(username=config.get("sasl.username"),
                                     password=config.get("sasl.password"),
                                     ssl_context=context, mechanism=mechanism)
    if protocol != "PLAINTEXT":
        raise ConfigError(f"security.protocol {protocol!r} is not one of PLAINTEXT, SSL, "
                          "SASL_PLAINTEXT, SASL_SSL")
    return None
