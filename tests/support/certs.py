"""Test certificates made with the openssl CLI, shaped like the ones the DIFC proxy makes.

The proxy makes a fresh CA and server certificate for every run: ECDSA P-256, valid about a day,
SANs localhost, 127.0.0.1 and ::1. `make_pki(directory)` makes that pair; `make_ca` and
`make_cert` make the variants that tests of failures need:

    pki = make_pki(tmp)                               # .ca_cert, .server_cert, .server_key
    stranger = make_cert(tmp, make_ca(tmp, "other"))  # from a CA the client does not trust
    wrong_name = make_cert(tmp, pki.ca, sans=["DNS:other.example"])
    expired = make_cert(tmp, pki.ca, not_before=datetime.now(timezone.utc) - timedelta(days=3))

Every file is written under the given directory; nothing is read from or written to the system's
certificate store.
"""

import datetime
import os
import subprocess
import types

DEFAULT_SANS = ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
_OPENSSL_TIMEOUT = 30


def _openssl(*args, cwd=None):
    completed = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True,
                               text=True, timeout=_OPENSSL_TIMEOUT)
    if completed.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s"
                           % (args[0], completed.returncode, completed.stderr.strip()))
    return completed.stdout


def _unique_stem(directory, name):
    stem = os.path.join(directory, name)
    counter = 1
    while os.path.exists(stem + ".key"):
        counter += 1
        stem = os.path.join(directory, "%s-%d" % (name, counter))
    return stem


def _new_key(path):
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path)
    os.chmod(path, 0o600)


def _openssl_time(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def make_ca(directory, name="tcptunnel test CA", days=2):
    """A self-signed CA (ECDSA P-256). Returns a namespace with `cert`, `key` and `name`."""
    stem = _unique_stem(directory, "ca-" + "".join(c if c.isalnum() else "-" for c in name))
    key, cert = stem + ".key", stem + ".crt"
    _new_key(key)
    _openssl("req", "-x509", "-new", "-sha256", "-key", key, "-subj", "/CN=" + name,
             "-days", days,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash",
             "-out", cert)
    return types.SimpleNamespace(cert=cert, key=key, name=name)


def make_cert(directory, ca, name="server", sans=DEFAULT_SANS, days=1, not_before=None):
    """A server certificate (ECDSA P-256) signed by `ca` (from make_ca).

    `sans` are subjectAltName entries such as "DNS:localhost" or "IP:::1". The certificate is
    valid for `days` days from `not_before` (an aware datetime; default: five minutes ago, so a
    clock a little behind still accepts it). A `not_before` far enough in the past makes an
    expired certificate, one in the future a not-yet-valid one.
    Returns a namespace with `cert`, `key` and `sans`.
    """
    if not_before is None:
        not_before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    not_after = not_before + datetime.timedelta(days=days)
    stem = _unique_stem(directory, name)
    key, cert = stem + ".key", stem + ".crt"
    work = stem + ".signing"
    os.mkdir(work)
    csr = os.path.join(work, "request.csr")
    _new_key(key)
    _openssl("req", "-new", "-sha256", "-key", key, "-subj", "/CN=" + name, "-out", csr)

    # `openssl x509 -req` in OpenSSL 3.0 can set only a length of validity, not its start, so
    # `openssl ca` signs: it takes both dates. Its bookkeeping files stay in `work`.
    database = os.path.join(work, "index.txt")
    open(database, "w").close()
    extensions = os.path.join(work, "extensions.cnf")
    config = os.path.join(work, "ca.cnf")
    with open(extensions, "w") as out:
        out.write("basicConstraints=critical,CA:FALSE\n"
                  "keyUsage=critical,digitalSignature\n"
                  "extendedKeyUsage=serverAuth\n"
                  "authorityKeyIdentifier=keyid\n"
                  "subjectAltName=%s\n" % ",".join(sans))
    with open(config, "w") as out:
        out.write("[ca]\ndefault_ca = test_ca\n"
                  "[test_ca]\ndatabase = %s\nserial = %s\nnew_certs_dir = %s\n"
                  "default_md = sha256\npolicy = any_name\nunique_subject = no\n"
                  "[any_name]\ncommonName = supplied\n"
                  % (database, os.path.join(work, "serial"), work))
    _openssl("ca", "-batch", "-notext", "-rand_serial", "-config", config,
             "-cert", ca.cert, "-keyfile", ca.key, "-in", csr, "-out", cert,
             "-extfile", extensions,
             "-startdate", _openssl_time(not_before), "-enddate", _openssl_time(not_after))
    return types.SimpleNamespace(cert=cert, key=key, sans=tuple(sans))


def make_pki(directory):
    """A test CA and a server certificate for localhost, 127.0.0.1 and ::1, valid about a day.

    Returns a namespace with `ca` (see make_ca), `ca_cert`, `server_cert` and `server_key`.
    """
    ca = make_ca(directory)
    server = make_cert(directory, ca)
    return types.SimpleNamespace(ca=ca, ca_cert=ca.cert, server_cert=server.cert,
                                 server_key=server.key)
