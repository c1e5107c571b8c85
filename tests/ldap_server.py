"""A real OpenLDAP slapd for tests (Debian's `slapd`): a throwaway config in a temporary
folder (slapd.conf, no debconf, no cn=config), loaded with `slapadd`, listening on
loopback only for ldap:// (plain and STARTTLS) and ldaps:// with a self-signed
certificate. The system's own slapd configuration is never touched.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.util import free_ports

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SUFFIX = "dc=corral,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
SERVICE_DN = f"cn=service,{SUFFIX}"
SERVICE_PW = "service secret"


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class Person:
    uid: str
    password: str
    given: str
    sn: str
    mail: str | None = None

    @property
    def dn(self) -> str:
        return f"uid={self.uid},ou=people,{SUFFIX}"

    def ldif(self) -> str:
        lines = [f"dn: {self.dn}", "objectClass: inetOrgPerson", f"uid: {self.uid}",
                 f"cn: {self.given} {self.sn}", f"sn: {self.sn}", f"givenName: {self.given}",
                 f"userPassword: {ssha(self.password)}"]  # fmt: skip
        if self.mail:
            lines.append(f"mail: {self.mail}")
        return "\n".join(lines) + "\n"


class Slapd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_ports(2)
        self.tls_port = self.port + 1
        self.root_pw = base64.b32encode(os.urandom(10)).decode()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cert = str(root / "cert.pem")

    def _conf(self) -> str:
        r = self.root
        return "\n".join([
            *(f"include /etc/ldap/schema/{s}.schema"
              for s in ("core", "cosine", "nis", "inetorgperson")),
            f"pidfile {r}/slapd.pid", f"argsfile {r}/slapd.args",
            "modulepath /usr/lib/ldap", "moduleload back_mdb",
            f"TLSCertificateFile {r}/cert.pem", f"TLSCertificateKeyFile {r}/key.pem",
            # Anonymous clients may only bind; reading needs a bound user (the service).
            "access to attrs=userPassword by anonymous auth by self read by * none",
            "access to * by users read by * none",
            "database mdb", "maxsize 16777216", f'suffix "{SUFFIX}"', f'rootdn "{ROOT_DN}"',
            f"rootpw {self.root_pw}", f"directory {r}/db", "",
        ])  # fmt: skip

    def start(self, people: list[Person], groups: dict[str, list[str]]) -> Slapd:
        (self.root / "db").mkdir(parents=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(self.root / "key.pem"), "-out", self.cert],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        conf = self.root / "slapd.conf"
        conf.write_text(self._conf())
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: corral\n"
            "dc: corral\n",
            f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: service\nuserPassword: {ssha(SERVICE_PW)}\n",
            *(p.ldif() for p in people),
            *(
                f"dn: cn={name},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {name}\n"
                + "".join(f"member: uid={m},ou=people,{SUFFIX}\n" for m in members)
                for name, members in groups.items()
            ),
        ]
        (self.root / "data.ldif").write_text("\n".join(entries))
        subprocess.run([SLAPADD, "-f", str(conf), "-l", str(self.root / "data.ldif")],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tls_port}/"
        # -d keeps slapd in the foreground, so this process owns it and stops it.
        with open(self.root / "slapd.log", "wb") as log:
            self.proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", urls, "-d", "0"],
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.root / 'slapd.log').read_text()}")
            try:
                for port in (self.port, self.tls_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not listen within 20 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def admin(self) -> object:
        """An ldap3 connection bound as the directory's root, to change it under a test."""
        import ldap3

        server = ldap3.Server("127.0.0.1", port=self.port, connect_timeout=5)
        return ldap3.Connection(server, ROOT_DN, self.root_pw, auto_bind=True, receive_timeout=5)


def available() -> str | None:
    """Why slapd cannot run here, or None."""
    for tool in (SLAPD, SLAPADD, "/etc/ldap/schema/inetorgperson.schema"):
        if not os.path.exists(tool):
            return f"{tool} is missing (Debian package slapd)"
    return None
