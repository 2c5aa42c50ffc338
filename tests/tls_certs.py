"""Throwaway certificates for the TLS tests, made with the openssl CLI."""
import os
import shutil
import subprocess
import tempfile

import pytest

OPENSSL = shutil.which("openssl")


class Certs:
    """A CA, server certificates signed by it, a client certificate, and a
    second CA that signed none of them."""

    def __init__(self, d: str):
        self.dir = d
        self.ca, self.ca_key = self._ca("ca", "cacheme test CA")
        self.other_ca, _ = self._ca("other-ca", "cacheme other CA")
        self.server, self.server_key = self._leaf(
            "server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.wrong, self.wrong_key = self._leaf(
            "wrong", "wrong.example", "subjectAltName=DNS:wrong.example,IP:10.9.9.9")
        self.client, self.client_key = self._leaf(
            "client", "cacheme client", "extendedKeyUsage=clientAuth")

    def _run(self, *args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=self.dir, check=True, capture_output=True,
                       timeout=60)

    def _ca(self, name: str, cn: str):
        # key usage: what X509_STRICT verification (Python 3.13's default
        # context) requires of a CA
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                  "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={cn}",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return os.path.join(self.dir, f"{name}.crt"), os.path.join(self.dir, f"{name}.key")

    def _leaf(self, name: str, cn: str, ext: str):
        with open(os.path.join(self.dir, f"{name}.ext"), "w") as f:
            # the key identifiers X509_STRICT verification asks of a leaf
            f.write(ext + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                  "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                  "-extfile", f"{name}.ext")
        return os.path.join(self.dir, f"{name}.crt"), os.path.join(self.dir, f"{name}.key")


@pytest.fixture(scope="module")
def certs():
    """A module's throwaway certificates, in a temp dir removed after it."""
    d = tempfile.mkdtemp(prefix="cacheme-tls-")
    try:
        yield Certs(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
