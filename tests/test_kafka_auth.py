"""Kafka security settings without a broker: one configuration reaches both client libraries,
and the password stays out of everything printable."""

from __future__ import annotations

import faust
import pytest
from faust.types.auth import AuthProtocol, SASLMechanism

from streaminfer.errors import ConfigError
from streaminfer.streams.kafka_auth import faust_credentials
from streaminfer.streams.logs import redact, secrets_of
from streaminfer.streams.settings import load_settings

PW = "sc4am-pw-never-shown"


def _sasl(**extra: object) -> object:
    return load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="app",
                         kafka_sasl_password=PW, **extra)


def test_sasl_settings_configure_confluent_kafka_and_faust_alike() -> None:
    settings = _sasl(kafka_ssl_ca_location=None)
    config = settings.kafka_config()
    assert {k: config[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username",
                                   "sasl.password")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app", "sasl.password": PW}
    creds = faust_credentials(config)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password) == ("app", PW)
    assert creds.mechanism is SASLMechanism.SCRAM_SHA_512
    assert creds.protocol is AuthProtocol.SASL_SSL and creds.ssl_context is not None


def test_x_properties_win_and_reach_faust_too() -> None:
    settings = load_settings(kafka_properties={"security.protocol": "SASL_PLAINTEXT",
                                               "sasl.mechanism": "PLAIN",
                                               "sasl.username": "u", "sasl.password": PW})
    creds = faust_credentials(settings.kafka_config())
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_PLAINTEXT and creds.mechanism.value == "PLAIN"
    assert faust_credentials(load_settings().kafka_config()) is None
    ssl_only = faust_credentials(load_settings(kafka_security_protocol="SSL").kafka_config())
    assert isinstance(ssl_only, faust.SSLCredentials)


def test_password_is_masked_in_settings_repr_and_logs() -> None:
    settings = _sasl()
    assert PW not in repr(settings) and PW not in str(settings.model_dump())
    assert PW in secrets_of(settings)
    assert PW not in redact(f"login failed: {settings.kafka_config()}", secrets_of(settings))


def test_sasl_without_a_user_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="needs kafka_sasl_username and kafka_sasl_password"
                       ) as caught:
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=PW)
    assert PW not in str(caught.value)


def test_faust_refuses_a_mechanism_it_cannot_speak() -> None:
    with pytest.raises(ConfigError, match="GSSAPI"):
        faust_credentials({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"})
