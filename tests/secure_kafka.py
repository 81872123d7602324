"""A one-node KRaft broker of a test's own with a SASL_SSL listener, SCRAM users and ACLs.

The jars are those ``deploy/local/services.sh`` runs the dev broker from (``services.sh libs``
fetches them once into the cache), so no second download and no second Kafka version. The
broker listens for clients on SASL_SSL only (SCRAM-SHA-256, certificates from
``tests/certs.py``) and authorizes with KRaft's ``StandardAuthorizer``: ``admin`` is a super
user, every other user gets only what ACLs grant. Its controller listener is plaintext on
127.0.0.1 (the broker talks to itself there, as ``User:ANONYMOUS``, which is therefore a super
user too; a production controller listener would use SSL or SASL as well).
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from certs import TlsFiles
from confluent_kafka.admin import AdminClient
from servers import SERVICES_SCRIPT, free_port

MECHANISM = "SCRAM-SHA-256"
ADMIN = ("admin", "admin-pw-5b2a")
START_TIMEOUT_S = 120


def kafka_libs() -> Path:
    """The broker jars' directory (fetched by ``services.sh libs`` into the cache once)."""
    proc = subprocess.run(["bash", str(SERVICES_SCRIPT), "libs"], capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        pytest.fail(f"services.sh libs failed:\n{proc.stderr}", pytrace=False)
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass
class SecureBroker:
    """A SASL_SSL broker in ``workdir``; ``users`` maps SCRAM user names to passwords."""

    workdir: Path
    tls: TlsFiles
    users: dict[str, str]
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_config(self, user: str, password: str) -> dict[str, Any]:
        """librdkafka properties of a client logged in as ``user``."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": MECHANISM, "sasl.username": user, "sasl.password": password,
                "ssl.ca.location": str(self.tls.ca)}

    def admin(self) -> AdminClient:
        return AdminClient({**self.client_config(*ADMIN), "log_level": 0})

    def _write_config(self) -> Path:
        keystore = self.workdir / "server-keystore.pem"  # Kafka's PEM keystore: key + chain
        keystore.write_text(self.tls.key.read_text() + self.tls.cert.read_text())
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{ADMIN[0]}" password="{ADMIN[1]}";')
        props = {
            "process.roles": "broker,controller", "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "controller.listener.names": "CONTROLLER",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM", "ssl.truststore.location": str(self.tls.ca),
            "authorizer.class.name":
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN[0]};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
            "log.dirs": str(self.workdir / "data"),
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self) -> None:
        libs = kafka_libs()
        config = self._write_config()
        java = ["java", "-Xmx512m", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                "-cp", f"{libs}/*"]
        cluster_id = "-"
        while cluster_id.startswith("-"):  # what `StorageTool random-uuid` prints
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = [arg for user, pw in {**dict([ADMIN]), **self.users}.items()
                 for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={pw}]")]
        fmt = subprocess.run([*java, "kafka.tools.StorageTool", "format", "--standalone",
                              "-t", cluster_id, "-c", str(config), *scram],
                             capture_output=True, text=True, timeout=300, check=False)
        if fmt.returncode != 0:
            pytest.fail(f"formatting the SASL broker failed:\n{fmt.stdout}\n{fmt.stderr}",
                        pytrace=False)
        log = (self.workdir / "broker.log").open("wb")
        self.proc = subprocess.Popen([*java, "kafka.Kafka", str(config)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        admin = self.admin()
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the SASL broker exited:\n{self.log_tail()}", pytrace=False)
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # not up yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the SASL broker did not answer in {START_TIMEOUT_S}s:\n"
                            f"{self.log_tail()}", pytrace=False)
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "broker.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if (
            path.is_file()) else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
