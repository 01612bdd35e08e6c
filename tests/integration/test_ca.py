"""A throw-away certificate authority for the integration tests, made with the openssl CLI.

Why: the fake Hub and its CDN speak TLS like the real ones, and zoogate always verifies upstream TLS.
Nothing is committed: every test run makes its own CA and server certificate in a temporary folder,
so no key material lives in the tree and nothing expires between runs.

    ca = TestCA(folder)            # CA + server certificate for localhost, 127.0.0.1 and ::1
    ca.ca_pem, ca.cert_pem, ca.key_pem
    other = TestCA.other(folder)   # an unrelated CA (and certificate): "untrusted certificate" tests
    cert, key = ca.issue("egress", dns=["example.test"])   # further leaf certificates when needed

Keys are ECDSA P-256: quick to generate, and every client under test (curl, Python's ssl, Node.js,
zoogate's OpenSSL) accepts them. The module name starts with "test_" only because the spec names it
so; it holds no test cases.
"""
import os
import subprocess

OPENSSL = "openssl"
VALID_DAYS = 30
# The names every server certificate made here answers to: the fake Hub listens on 127.0.0.1 and its
# CDN on "localhost", which may resolve to ::1.
DEFAULT_DNS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")


def _openssl(*args, cwd):
    """Runs one openssl command; its stderr becomes the error message when it fails."""
    completed = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, timeout=60)
    if completed.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: "
                           f"{completed.stderr.decode(errors='replace').strip()}")


class TestCA:
    """A CA made at test time plus one server certificate it signed (see the module docstring)."""

    __test__ = False  # not a test case, whatever unittest/pytest discovery thinks of the name

    def __init__(self, folder, common_name="zoogate test CA", server_dns=DEFAULT_DNS,
                 server_ips=DEFAULT_IPS):
        self.folder = os.path.abspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.common_name = common_name
        self.ca_pem = os.path.join(self.folder, "ca.pem")
        self.ca_key_pem = os.path.join(self.folder, "ca.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", self.ca_key_pem, "-out", self.ca_pem,
                 "-days", str(VALID_DAYS), "-subj", f"/CN={common_name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=self.folder)
        self._serial = 1
        self.cert_pem, self.key_pem = self.issue("server", dns=server_dns, ips=server_ips)

    @classmethod
    def other(cls, folder):
        """An unrelated CA with its own server certificate for the same names: a client that trusts
        only the main CA must refuse it."""
        return cls(os.path.join(folder, "untrusted-ca"), common_name="zoogate untrusted CA")

    def issue(self, name, dns=(), ips=(), common_name=None):
        """Signs a new server certificate for the given DNS names and IP addresses and returns
        (certificate path, key path); `name` is the file stem inside the CA's folder."""
        if not dns and not ips:
            raise ValueError("a certificate needs at least one DNS name or IP address")
        sans = [f"DNS:{host}" for host in dns] + [f"IP:{address}" for address in ips]
        cert = os.path.join(self.folder, f"{name}.pem")
        key = os.path.join(self.folder, f"{name}.key")
        csr = os.path.join(self.folder, f"{name}.csr")
        extensions = os.path.join(self.folder, f"{name}.ext")
        with open(extensions, "w", encoding="ascii") as handle:
            handle.write("basicConstraints = critical, CA:FALSE\n"
                         "keyUsage = critical, digitalSignature\n"
                         "extendedKeyUsage = serverAuth\n"
                         "subjectKeyIdentifier = hash\n"
                         "authorityKeyIdentifier = keyid:always\n"
                         f"subjectAltName = {', '.join(sans)}\n")
        subject = common_name or (list(dns) + list(ips))[0]
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={subject}", cwd=self.folder)
        self._serial += 1
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca_pem, "-CAkey", self.ca_key_pem,
                 "-set_serial", str(self._serial), "-days", str(VALID_DAYS), "-sha256",
                 "-extfile", extensions, "-out", cert, cwd=self.folder)
        return cert, key
